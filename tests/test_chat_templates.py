"""Chat on every file: GPT4All's published list (data and lookup) and the template order
(the file's own, GPT4All's published one, the user's, ChatML), in process and isolated."""
from __future__ import annotations

import json
import re
from importlib import resources

import pytest
from conftest import backend_built, require_backend

from gpt4all_loader import load
from gpt4all_loader.chat import BUILTIN, from_gpt4all, resolve_template, user_template
from gpt4all_loader.errors import ChatTemplateError
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, write_gptj, write_llama
from gpt4all_loader.published import by_name, load_table, lookup, verify

FALCON = "ggml-model-gpt4all-falcon-q4_0.bin"
ORCA_3B = "orca-mini-3b.ggmlv3.q4_0.bin"
OWN = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"
USER = [{"role": "user", "content": "hi"}]


def table_with(tmp_path, filename: str, path) -> str:
    """A test-only copy of the packaged table in which ``filename``'s entry describes the tiny file at
    ``path`` (its size and md5): the lookup matches it by name and size like the real file."""
    data = json.loads(resources.files("gpt4all_loader").joinpath("gpt4all_published.json").read_text())
    entry = next(e for e in data["entries"] if e["filename"] == filename)
    entry["filesize"] = path.stat().st_size
    entry["md5sum"] = verify(path).md5  # verify() of an unlisted file still reports its md5
    out = tmp_path / "table.json"
    out.write_text(json.dumps(data))
    return str(out)


# -- the table ------------------------------------------------------------------------------------

def test_the_table_holds_every_ggml_era_entry_with_its_commit():
    t = load_table()
    names = [e.filename for e in t.entries]
    assert len(names) == len(set(names)) == 28
    assert all(n.endswith(".bin") for n in names)
    for e in t.entries:
        assert re.fullmatch(r"[0-9a-f]{32}", e.md5sum) and e.filesize > 0, e
        assert re.fullmatch(r"[0-9a-f]{40}", e.commit) and "2023-06-02" <= e.date <= "2023-08-15", e
        assert e.prompt_template is None or "%1" in e.prompt_template
    falcon = by_name(FALCON)
    assert falcon is not None and falcon.summary() == "GPT4All Falcon, q4_0, 8 GB RAM"
    assert falcon.md5sum == "725f148218a65ce8ebcc724e52f31b49" and falcon.commit.startswith("a6309355")
    assert falcon.prompt_template == "### Instruction:\n%1\n### Response:\n"
    # files dropped before the last list: GPT-J groovy, MPT chat, the first LLaMA files
    groovy = by_name("ggml-gpt4all-j-v1.3-groovy.bin")
    assert groovy is not None and groovy.type == "GPT-J" and groovy.filesize == 3785248281
    mpt = by_name("ggml-mpt-7b-chat.bin")
    assert mpt is not None and mpt.prompt_template == "<|im_start|>user\n%1<|im_end|><|im_start|>assistant\n"
    assert by_name("ggml-gpt4all-l13b-snoozy.bin") is not None
    assert t.default_prompt_template == "### Human:\n%1\n### Assistant:\n"
    assert "### Human" in t.reverse_prompts


def test_lookup_by_name_and_size():
    assert lookup(FALCON, 4061641216).name == "GPT4All Falcon"
    assert lookup(f"/some/dir/{FALCON}", 4061641216) is not None
    assert lookup(FALCON, 4061641215) is None            # a partial download is not the file
    assert lookup("renamed-falcon.bin", 4061641216) is None
    # several published files share a size: the name tells them apart
    assert lookup("ggml-vicuna-13b-1.1-q4_2.bin", 8136770688).name == "Vicuna (large)"
    assert lookup("GPT4All-13B-snoozy.ggmlv3.q4_0.bin", 8136770688).name == "Snoozy"


def test_verify_md5(tmp_path):
    f = tmp_path / ORCA_3B
    f.write_bytes(b"tiny published file\n" * 1000)
    table = table_with(tmp_path, ORCA_3B, f)
    ok = verify(f, table)
    assert ok.ok is True and "matches" in ok.message and ok.md5 == ok.expected
    f.write_bytes(b"tiny published fil!\n" * 1000)   # same size, other bytes
    bad = verify(f, table)
    assert bad.ok is False and "MISMATCH" in bad.message and bad.md5 != bad.expected
    f.write_bytes(b"short")
    short = verify(f, table)
    assert short.ok is False and "not the published file" in short.message
    other = tmp_path / "mine.bin"
    other.write_bytes(b"x")
    none = verify(other, table)
    assert none.ok is None and "not in GPT4All's published list" in none.message
    with pytest.raises(ValueError, match="not a published-files table"):
        load_table(tmp_path / "mine.bin")


# -- the template order -----------------------------------------------------------------------------

def test_gpt4all_templates_render_as_gpt4all_108_did():
    t = from_gpt4all("### User:\n%1\n### Response:\n", "### System:\nBe brief.\n\n", source="x")
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert t.render(conv) == "### System:\nBe brief.\n\n### User:\na\n### Response:\nb\n### User:\nc\n### Response:\n"
    # a blank system prompt (GPT4All's " ") is none; a system message replaces the published one
    assert from_gpt4all("Q: %1\nA:", " ", source="x").render(USER) == "Q: hi\nA:"
    assert t.render([{"role": "system", "content": "Mine."}, *USER]).startswith("Mine.\n\n### User:\nhi")
    # %2 (later lists) places the reply: what follows it follows each earlier reply
    two = from_gpt4all("<u>%1</u><a>%2</a>", None, source="x")
    assert two.render(conv) == "<u>a</u><a>b</a><u>c</u><a>"


def test_resolution_order(tmp_path):
    own = write_llama(tmp_path / "own.gguf", TinyLlama(seed=0), "gguf", version=3, chat_template=OWN)
    bare = write_llama(tmp_path / "bare.gguf", TinyLlama(seed=0), "gguf", version=3)
    orca = write_llama(tmp_path / ORCA_3B, TinyLlama(seed=0), "ggjt", version=3)
    table = table_with(tmp_path, ORCA_3B, orca)
    assert resolve_template(str(own), read_facts(str(own)), "llama2", table).source == "file"
    pub = resolve_template(str(orca), read_facts(str(orca)), "llama2", table)
    assert pub.source == "gpt4all:Mini Orca (Small)" and "### Human" in pub.stop
    assert pub.render(USER).startswith("### System:\nYou are an AI assistant")
    # the packaged table: the tiny file's size is not the published one
    assert resolve_template(str(orca), read_facts(str(orca))).source == "default:chatml"
    assert resolve_template(str(bare), read_facts(str(bare)), "llama2").source == "user:llama2"
    assert resolve_template(str(bare), read_facts(str(bare))).source == "default:chatml"
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}<{{ m.content }}>{% endfor %}")
    mine = resolve_template(str(bare), read_facts(str(bare)), str(jinja))
    assert mine.source == f"user:{jinja}" and mine.render(USER) == "<hi>"


def test_user_templates_are_checked():
    assert set(BUILTIN) >= {"chatml", "llama2", "alpaca", "vicuna"}
    with pytest.raises(ChatTemplateError, match="neither a built-in"):
        user_template("chatmI")
    assert user_template("chatml").render(USER) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_bad_template_file(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for %}")
    with pytest.raises(ChatTemplateError, match="not a Jinja template"):
        user_template(str(bad))


# -- chat on files without a template ---------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    out = {"ggjt": write_llama(d / "tiny-ggjt3.bin", TinyLlama(seed=1), "ggjt", version=3),
           "gguf": write_llama(d / "bare.gguf", TinyLlama(seed=0), "gguf", version=3),
           "gptj": write_gptj(d / "gptj.bin", TinyGPTJ(seed=0)),
           "published": write_llama(d / ORCA_3B, TinyLlama(seed=2), "ggjt", version=3)}
    out["table"] = table_with(d, ORCA_3B, out["published"])
    return out


BACKENDS = {"ggjt": "llama-2023-08", "gguf": "gguf-2026-10", "published": "llama-2023-08"}


def _need(kind: str) -> None:
    if kind == "gptj":
        if not (backend_built("ggml-gpt4all-2023-05") or backend_built("ggml-gpt4all-2023-08")):
            pytest.skip("no ggml-gpt4all backend is built: gpt4all-build --only ggml-gpt4all-2023-08")
    else:
        require_backend(BACKENDS[kind])


@pytest.mark.parametrize("kind", ["ggjt", "gptj", "gguf", "published"])
@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "isolated"])
def test_chat_on_a_file_without_template(files, kind, isolated):
    _need(kind)
    table = files["table"] if kind == "published" else None
    expect = {"published": "gpt4all:Mini Orca (Small)"}.get(kind, "default:chatml")
    with load(files[kind], n_ctx=256, n_threads=1, isolated=isolated, published_table=table) as m:
        assert m.chat_template_source == m.info.chat_template_source == expect
        reply = m.chat(USER, max_tokens=6, temperature=0)
        # the same as generating from the rendered conversation, stopped where the template stops
        t = m.chat_template
        assert reply == m.generate(t.render(USER), max_tokens=6, temperature=0, special=True, stop=t.stop)
        with m.chat_session() as s:
            assert s.send("hi", max_tokens=6, temperature=0) == reply
            assert isinstance(s.send("and then?", max_tokens=4, temperature=0), str)
        assert len(s.messages) == 4


def test_user_template_and_the_files_own_wins(files, tmp_path):
    require_backend("gguf-2026-10")
    with load(files["gguf"], n_ctx=256, n_threads=1, chat_template="alpaca") as m:
        assert m.chat_template_source == "user:alpaca"
        assert m.chat_template.render(USER) == "### Instruction:\nhi\n\n### Response:\n"
        assert isinstance(m.chat(USER, max_tokens=3, temperature=0), str)
    own = write_llama(tmp_path / "own.gguf", TinyLlama(seed=0), "gguf", version=3, chat_template=OWN)
    with load(own, n_ctx=256, n_threads=1, chat_template="alpaca") as m:
        assert m.chat_template_source == "file" and m.chat_template.stop == ()
    with pytest.raises(ChatTemplateError, match="neither a built-in"):
        load(files["gguf"], chat_template="no-such-template")
