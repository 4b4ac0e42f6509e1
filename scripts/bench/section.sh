# shellcheck shell=bash
# Sourced by the benchmark scripts (never run): the one writer of BENCHMARKS.md's sections.

# write_section NAME TEXT: replaces BENCHMARKS.md's section between NAME's markers
# (`<!-- bench:NAME:start -->` … `<!-- bench:NAME:end -->`), keeping what is around it; a new
# section is appended. Run from the repository's root.
write_section() {
  python3 - "$1" "$2" <<'PY'
import pathlib, re, sys
name, section = sys.argv[1], sys.argv[2].strip() + "\n"
path = pathlib.Path("BENCHMARKS.md")
text = path.read_text() if path.exists() else "# Benchmarks\n"
start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
block = f"{start}\n{section}{end}\n"
if start in text and end in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end) + "\n?", lambda _: block, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + block
path.write_text(text)
PY
}
