"""What the Python clients driven by tests/tests/*.rs share.

The Rust tests run each client as `python tests/python/<client>.py ...`, so
Python puts this directory first on sys.path and `import common` finds this
file whatever the working directory.

- `compile_protos` generates gRPC stubs from proto/ at run time;
- `check` and `print_passed`: expectations that stop at the first failure
  (grpc_client.py, kms_v2_client.py);
- `run_check` and `failures`: named checks that all run, each reported
  (transit_hvac.py).
"""
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compile_protos(proto):
    """Generates Python stubs for proto/<proto> into a fresh temporary
    directory and puts it first on sys.path, so its packages import."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(ROOT / "proto" / proto)])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)


passed = 0


def check(cond, what):
    """Counts a met expectation; on an unmet one prints it and exits 1."""
    global passed
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    passed += 1


def print_passed():
    """The last line of a run in which every `check` passed."""
    print(f"{passed} passed, 0 failed")


failures = []


def run_check(name, fn):
    """Runs one check; an exception or a false assertion fails it."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure must be reported
        failures.append(name)
        print(f"FAIL - {name}: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stdout)
    else:
        print(f"ok - {name}")
