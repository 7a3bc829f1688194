"""Prints pip's effective settings (pip.conf files and PIP_* variables) as `uv pip install` arguments, one per line.

uv reads none of pip's configuration, so without this a machine's find-links (e.g. a local CPU torch wheel), index
URLs and constraint files would silently be ignored. Run with the venv's python (pip must be importable there).
"""
import ast
import subprocess
import sys

OPTIONS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "constraint": "--constraint", "constraints": "--constraint"}


def main() -> None:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    seen = set()
    for line in listing.splitlines():  # e.g.  global.find-links='/opt/wheels'  or  :env:.find-links='/opt/wheels'
        key, sep, value = line.partition("=")
        option = OPTIONS.get(key.rsplit(".", 1)[-1])
        if not sep or option is None:
            continue
        for item in ast.literal_eval(value).split():
            if (option, item) not in seen:
                seen.add((option, item))
                print(f"{option}={item}")


if __name__ == "__main__":
    main()
