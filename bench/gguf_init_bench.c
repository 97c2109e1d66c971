/* gguf_init_bench.c - ggml's own GGUF header reader, timed in-process: the reference for the probe.
 *
 * bench/bench_probe_ggml.py compiles it against the gguf-2026-10 static archives already in the cache
 * (libggml-base.a holds gguf.cpp) and reads one JSON line per file from its stdout.
 *
 *   gguf_init_bench N FILE...
 *
 * Each file: one untimed call (page cache), then N timed calls of the header-only read
 * gguf_init_from_file(path, {.no_alloc = true, .ctx = NULL}) followed by gguf_free; prints the median
 * and the minimum in microseconds, and the number of key/values and tensors ggml saw.
 */
#include "ggml.h"
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void no_log(enum ggml_log_level level, const char *text, void *user) {
    (void)level; (void)text; (void)user;
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s N FILE...\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]);
    if (n < 1) n = 1;
    ggml_log_set(no_log, NULL);
    double *t = (double *)malloc(sizeof(double) * (size_t)n);
    for (int f = 2; f < argc; f++) {
        struct gguf_init_params params = {/*.no_alloc =*/ true, /*.ctx =*/ NULL};
        struct gguf_context *ctx = gguf_init_from_file(argv[f], params);
        if (!ctx) {
            printf("{\"file\": \"%s\", \"error\": \"gguf_init_from_file failed\"}\n", argv[f]);
            continue;
        }
        long long n_kv = gguf_get_n_kv(ctx), n_tensors = gguf_get_n_tensors(ctx);
        gguf_free(ctx);
        for (int i = 0; i < n; i++) {
            double t0 = now_us();
            ctx = gguf_init_from_file(argv[f], params);
            double t1 = now_us();
            gguf_free(ctx);
            t[i] = t1 - t0;
        }
        qsort(t, (size_t)n, sizeof(double), cmp_double);
        double med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
        printf("{\"file\": \"%s\", \"n\": %d, \"median_us\": %.2f, \"min_us\": %.2f, \"n_kv\": %lld, "
               "\"n_tensors\": %lld}\n", argv[f], n, med, t[0], n_kv, n_tensors);
        fflush(stdout);
    }
    free(t);
    return 0;
}
