"""Write loader/gpt4all_published.json from a clone of nomic-ai/gpt4all (its git history, read with git).

    python tools/gpt4all_published.py GPT4ALL_CLONE [-o loader/gpt4all_published.json]

Every ggml-era (.bin) file that ever appeared in ``gpt4all-chat/metadata/models.json``, from its first
commit (be9f6ad5, 2023-06-02) to its last change before GGUF (a6309355, 2023-08-15; ``models2.json``,
GGUF only, follows on 2023-10-05).  Each entry holds the data of the last commit that listed the file
(named in ``commit``), factual fields and the prompt templates only (the descriptions are left out).
Commits whose models.json is not valid JSON are skipped: no file appears only in one of them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LIST = "gpt4all-chat/metadata/models.json"
LAST = "a6309355"
#: gpt4all's key -> ours (snake_case); integers where the list writes numbers as strings
FIELDS = {"filename": "filename", "filesize": "filesize", "md5sum": "md5sum", "name": "name", "type": "type",
          "quant": "quant", "ramrequired": "ramrequired", "parameters": "parameters", "requires": "requires",
          "url": "url", "promptTemplate": "prompt_template", "systemPrompt": "system_prompt"}
INTEGERS = {"filesize", "ramrequired"}


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", help="a clone of nomic-ai/gpt4all (its folder, or a bare repository)")
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent.parent / "loader" / "gpt4all_published.json"))
    args = ap.parse_args()
    last = git(args.repo, "rev-parse", LAST).strip()
    log = git(args.repo, "log", "--reverse", "--format=%H %ad", "--date=short", last, "--", LIST).split("\n")
    entries: dict[str, dict[str, object]] = {}
    for line in filter(None, log):
        commit, date = line.split()
        try:
            listed = json.loads(git(args.repo, "show", f"{commit}:{LIST}"))
        except ValueError:
            continue
        for e in listed:
            if not str(e.get("filename", "")).endswith(".bin"):
                continue
            first = entries.get(e["filename"], {})
            row: dict[str, object] = {ours: (int(e[theirs]) if ours in INTEGERS else e[theirs])
                                      if theirs in e else None for theirs, ours in FIELDS.items()}
            row.update(commit=commit, date=date, first_commit=first.get("first_commit", commit),
                       first_date=first.get("first_date", date))
            entries[e["filename"]] = row
    default = git(args.repo, "show", f"{last}:gpt4all-chat/modellist.h")
    assert '"### Human:\\n%1\\n### Assistant:\\n"' in default, "the default prompt template moved"
    shared = git(args.repo, "show", f"{last}:gpt4all-backend/llmodel_shared.cpp")
    stops = ["### Instruction", "### Prompt", "### Response", "### Human", "### Assistant", "### Context"]
    assert ", ".join(f'"{s}"' for s in stops) in shared, "the reverse prompts moved"
    table = {
        "source": {"repository": "nomic-ai/gpt4all", "path": LIST, "last_commit": last,
                   "license": "MIT (gpt4all); only factual fields and the prompt templates are kept"},
        "default_prompt_template": {
            "text": "### Human:\n%1\n### Assistant:\n",
            "source": f"gpt4all-chat/modellist.h at {last[:8]} (ModelInfo::m_promptTemplate; the same text as "
                      "qml/SettingsDialog.qml's defaultPromptTemplate at be9f6ad5): what GPT4All used for an "
                      "entry without promptTemplate"},
        "reverse_prompts": {
            "list": stops,
            "source": f"gpt4all-backend/llmodel_shared.cpp at {last[:8]}: GPT4All stopped every reply at these"},
        "entries": sorted(entries.values(), key=lambda r: (str(r["first_date"]), str(r["filename"]))),
    }
    Path(args.output).write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(entries)} entries -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
