"""`dualfashion-jax session`: the session engine from a terminal (the web page is another client of the same API).

    dualfashion-jax session users   --checkpoint RUN/stage3 --data RUN/data --db sessions.db
    dualfashion-jax session create  ... --user u3 --task pfitb [--outfit test:1234]   -> prints the session id
    dualfashion-jax session round   ... --id SID [--feedback "Color: blue, not: striped"] [--n 4] [--save-dir DIR]
    dualfashion-jax session show    ... --id SID
    dualfashion-jax session replay  ... --id SID      (regenerates every round; exit 1 if a candidate differs)
Sampling settings: configs/generate.py:<task>, or the demo's (`--demo-settings`), then `--set FIELD=VALUE`.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from dualfashion_jax.sessions import engine as engine_lib
from dualfashion_jax.sessions.feedback import FeedbackError

ACTIONS = ("users", "create", "round", "show", "replay")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualfashion-jax session", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--checkpoint", required=True, help="training workdir (stage 2/3) or converted checkpoints")
    p.add_argument("--data", required=True, help="dataset folder (its test split supplies users and outfits)")
    p.add_argument("--db", required=True, help="SQLite session store (created on first use)")
    p.add_argument("--user", help="create: user id (u<uid> for a dataset user, or one made by the web page)")
    p.add_argument("--task", choices=engine_lib.TASKS, default="pfitb")
    p.add_argument("--outfit", help="create: outfit id from `users`/outfits() (default: the user's first)")
    p.add_argument("--id", help="round/show/replay: session id")
    p.add_argument("--feedback", help='round: e.g. "Color: blue", "not: striped", "more like #2", "alternatives"')
    p.add_argument("--n", type=int, default=4, help="round: candidates (at most --max-candidates)")
    p.add_argument("--max-candidates", type=int, default=8)
    p.add_argument("--save-dir", help="round: also write the candidates' PNGs here")
    p.add_argument("--demo-settings", action="store_true", help="sample with configs/demo.py's settings")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a configs/generate.py field, e.g. --set steps=12 (repeatable; after --demo-settings)")
    return p


def _overrides(a) -> dict:
    """--demo-settings then every --set FIELD=VALUE (values parsed as JSON where they parse, else strings)."""
    out = engine_lib.demo_overrides() if a.demo_settings else {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _print_round(r) -> None:
    print(f"round {r.number}: feedback {r.feedback!r} -> preference {json.dumps(r.preference)}")
    for c in r.candidates:
        shop = ", ".join(f"#{d['item_id']} ({d['score']:.2f})" for d in c.shop)
        print(f"  #{c.index + 1} seed {c.seed}: {c.caption}\n      shop the look: {shop}")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.action in ("round", "show", "replay") and not a.id:
        print(f"session {a.action}: --id is required", file=sys.stderr)
        return 2
    if a.action == "create" and not a.user:
        print("session create: --user is required", file=sys.stderr)
        return 2
    try:
        overrides = _overrides(a)
    except ValueError as e:
        print(f"session {a.action}: {e}", file=sys.stderr)
        return 2
    eng = engine_lib.SessionEngine.open(a.checkpoint, a.data, a.db, max_candidates=a.max_candidates,
                                        settings=overrides)
    try:
        if a.action == "users":
            for u in eng.users():
                print(u["id"], json.dumps(u["profile"]["appearance"]), [o["id"] for o in eng.outfits(u["id"], 3)])
        elif a.action == "create":
            print(eng.start(a.user, a.task, a.outfit).id)
        elif a.action == "round":
            r = eng.round(a.id, a.feedback, a.n, on_progress=lambda d, t: print(f"  sampling {d}/{t}", file=sys.stderr))
            _print_round(r)
            if a.save_dir:
                out = pathlib.Path(a.save_dir)
                out.mkdir(parents=True, exist_ok=True)
                for c in r.candidates:
                    (out / f"{a.id}_r{r.number}_{c.index + 1}.png").write_bytes(c.image_png)
        elif a.action == "show":
            s = eng.session(a.id)
            print(f"session {s.id}: user {s.user_id}, {s.task}, outfit {s.outfit} ({s.categories})")
            for r in s.rounds:
                _print_round(r)
        else:
            stored, again = eng.session(a.id), eng.replay(a.id)
            same = all([c.image_png for c in x.candidates] == [c.image_png for c in y.candidates]
                       and [c.caption for c in x.candidates] == [c.caption for c in y.candidates]
                       for x, y in zip(stored.rounds, again.rounds))
            print(f"replayed {len(again.rounds)} round(s): {'identical' if same else 'DIFFERENT'} candidates")
            return 0 if same else 1
    except (FeedbackError, KeyError, ValueError) as e:
        print(f"session {a.action}: {e}", file=sys.stderr)
        return 2
    return 0
