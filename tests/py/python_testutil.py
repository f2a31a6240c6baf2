"""What the Python module's tests share: the fkd binary's error messages."""
import subprocess


def cli_error(fkd, *args):
    """The one-line message `fkd ARGS` prints as it fails (without "fkd: error: ")."""
    r = subprocess.run([fkd, *args], capture_output=True, text=True)
    assert r.returncode != 0, "fkd %s succeeded" % " ".join(args)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("fkd: error: "), line
    return line[len("fkd: error: "):]
