"""`dualfashion-jax serve`: the session web page on a local HTTP server (FastAPI + uvicorn, one model load).

  dualfashion-jax serve --checkpoint WORKDIR --data DATA [--db PATH] [--host 127.0.0.1] [--port 8000]
      [--max-candidates 8] [--demo-settings] [--steps N] [--caption-steps N] [--like-strength S|none]
      [--batch-window 0.05]
Open http://HOST:PORT/ in a browser. Sessions persist in the SQLite file --db (default WORKDIR/sessions.sqlite)
and survive a restart. Bad input ends with one `error:` line (exit 2 from argparse, 1 otherwise).
"""
from __future__ import annotations

import argparse
import os
import sys

import uvicorn


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualfashion-jax serve", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="stage-2 training workdir (the model is loaded once)")
    p.add_argument("--data", required=True, help="dataset dir: users, outfits and the catalogue to shop from")
    p.add_argument("--db", default=None, help="sessions SQLite file (default: CHECKPOINT/sessions.sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-candidates", type=int, default=8, help="most candidates one round may ask for")
    p.add_argument("--demo-settings", action="store_true",
                   help="sample with configs/demo.py's settings (what the demo's checkpoints were evaluated with)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps per sample (default: configs/generate.py)")
    p.add_argument("--caption-steps", type=int, default=None,
                   help="caption sampler steps (default: configs/generate.py)")
    p.add_argument("--like-strength", default=None,
                   help="'more like #k' restarts from candidate k's image noised to this share of the schedule "
                        "(0, 1]; 'none': it only copies k's caption values (default: the engine's LIKE_STRENGTH)")
    p.add_argument("--batch-window", type=float, default=0.05,
                   help="seconds a round waits for rounds of other sessions to sample with it as one batch")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for flag, path in (("--checkpoint", args.checkpoint), ("--data", args.data)):
        if not os.path.isdir(path):
            print(f"error: {flag} {path}: not a directory", file=sys.stderr)
            return 1
    for flag, value in (("--max-candidates", args.max_candidates), ("--steps", args.steps),
                        ("--caption-steps", args.caption_steps)):
        if value is not None and value < 1:
            print(f"error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 1
    like = {}  # SessionEngine.open's like_strength, when given
    if args.like_strength is not None:
        try:
            like["like_strength"] = None if args.like_strength == "none" else float(args.like_strength)
        except ValueError:
            like["like_strength"] = -1.0
        if like["like_strength"] is not None and not 0.0 < like["like_strength"] <= 1.0:
            print(f"error: --like-strength must be in (0, 1] or 'none', got {args.like_strength!r}", file=sys.stderr)
            return 1
    if args.batch_window < 0:
        print(f"error: --batch-window must be >= 0, got {args.batch_window}", file=sys.stderr)
        return 1
    # the model stack (JAX, orbax, the engine) loads after the flags parse
    from dualfashion_jax.sessions.engine import SessionEngine, demo_overrides
    from dualfashion_jax.web.app import create_app

    db = args.db or os.path.join(args.checkpoint, "sessions.sqlite")
    overrides = demo_overrides() if args.demo_settings else {}
    overrides.update({k: v for k, v in (("steps", args.steps), ("caption_steps", args.caption_steps)) if v is not None})
    try:
        engine = SessionEngine.open(args.checkpoint, args.data, db, max_candidates=args.max_candidates,
                                    settings=overrides, **like)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    app = create_app(engine, batch_window_s=args.batch_window)
    print(f"serving http://{args.host}:{args.port}/ (sessions in {db})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
