"""What the SDK scripts (tests/openai_sdk/, tests/anthropic_sdk/) share: an expected error, a
native route of the server, and running every test_* function in order.
"""

import json
import sys
import traceback
import urllib.request


def expect_raises(exc_type, fn):
    try:
        fn()
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def native_get(url, headers):
    """A native route of the server (not the compatible API), with the script's key."""
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def run_tests(scope, package, version):
    """Run every test_* function of `scope` in order; the first failure exits non-zero with its
    traceback. Ends with the `N passed (<package> <version>)` line tests/api/sdk.rs looks for."""
    tests = [(n, f) for n, f in scope.items() if n.startswith("test_") and callable(f)]
    for name, fn in tests:
        try:
            fn()
        except Exception:
            print(f"FAIL {name}", flush=True)
            traceback.print_exc()
            sys.exit(1)
        print(f"ok   {name}", flush=True)
    print(f"{len(tests)} passed ({package} {version})", flush=True)
