import subprocess
import sys

from conclave.cli.main import build_parser


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conclave", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for name in ("serve", "up", "sim", "check", "bench"):
        assert name in out.stdout


def test_parser_builds() -> None:
    assert build_parser().prog == "conclave"


def test_version_flag_prints_the_package_version() -> None:
    from conclave import __version__

    out = subprocess.run([sys.executable, "-m", "conclave", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"conclave {__version__}"


def test_serve_help_shows_every_default() -> None:
    from conclave.cli.serve import FLAGS

    out = subprocess.run([sys.executable, "-m", "conclave", "serve", "--help"], capture_output=True, text=True,
                         timeout=60, env={"COLUMNS": "400", "PATH": ""})
    assert out.returncode == 0
    lines: dict[str, str] = {}
    current = ""
    for ln in out.stdout.splitlines():  # an option's help may continue on the following lines
        if ln.strip().startswith("--"):
            current = ln.split()[0]
            lines[current] = ln
        elif current and ln.startswith("    "):
            lines[current] += " " + ln.strip()
    for flag, _metavar, default, _text in FLAGS:
        line = lines[f"--{flag}"]
        assert "(default: " in line, line
        if default:
            assert f"(default: {default})" in line, line


def test_client_names_are_importable_from_the_package() -> None:
    import conclave
    import conclave.client
    from conclave import Client, put_op, value  # the README's and docs/client.md's spelling

    assert set(conclave.client.__all__) == conclave.CLIENT_NAMES
    assert (Client, put_op, value) == (conclave.client.Client, conclave.client.put_op, conclave.client.value)
    # Importing the package alone does not load the client (the server and the pure cores do not need it).
    done = subprocess.run([sys.executable, "-c", "import sys, conclave.server.config; "
                           "print('conclave.client' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`conclave lab run all | head -1`: the reader goes away; no traceback, exit 141 (SIGPIPE's)."""

    proc = subprocess.Popen([sys.executable, "-m", "conclave", "lab", "run", "all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc == 141
