"""Issue 18, finding 2: ``config check`` checks the files a config names (there, readable, a certificate
that parses and has not expired, a key that belongs to its certificate), naming the key and the path,
exit 2; ``run`` refuses the same with the same words instead of a bare FileNotFoundError."""

import subprocess
import sys

from conftest import ROOT


def openssl_cert(d, name, days=30):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", f"/CN={name}",
                    "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt")], check=True, capture_output=True)
    return d / f"{name}.crt", d / f"{name}.key"


def with_real_files(example, tmp_path):
    """The example config with its files (CA, password file, state_dir) made real under tmp_path."""
    ca, _ = openssl_cert(tmp_path, "ca")
    (tmp_path / "mqtt.pass").write_text("pw\n")
    (tmp_path / "state").mkdir(exist_ok=True)
    text = example.read_text(encoding="utf-8")
    text = text.replace("/etc/store-agent/ca.pem", str(ca)).replace("/etc/store-agent/mqtt.pass", str(tmp_path / "mqtt.pass"))
    text = text.replace('state_dir = "/var/lib/store-agent"', f'state_dir = "{tmp_path / "state"}"')
    out = tmp_path / "config.toml"
    out.write_text(text, encoding="utf-8")
    return out


def cli(*args):
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def config(tmp_path, **mqtt):
    lines = ['store_id = "fc-1"', f'state_dir = "{tmp_path / "state"}"', "[mqtt]", 'host = "127.0.0.1"', "tls = true"]
    lines += [f'{k} = "{v}"' for k, v in mqtt.items()]
    lines += ["[[printers]]", 'name = "v"', 'connection = "virtual"']
    p = tmp_path / "c.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_each_file_problem_names_its_key_and_path(tmp_path):
    good_cert, good_key = openssl_cert(tmp_path, "store")
    other_cert, other_key = openssl_cert(tmp_path, "other")
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    (tmp_path / "adir").mkdir()
    cases = [
        ({"ca_file": str(tmp_path / "nope.crt")}, f"mqtt.ca_file: {tmp_path / 'nope.crt'}: does not exist"),
        ({"ca_file": str(tmp_path / "adir")}, "is a directory, not a file"),
        ({"ca_file": str(tmp_path / "garbage.crt")}, "mqtt.ca_file: " + str(tmp_path / "garbage.crt") + ": is not a PEM certificate"),
        ({"cert_file": str(good_cert), "key_file": str(other_key)}, f"mqtt.key_file: {other_key}: is not the key of {good_cert}"),
        ({"password_file": str(tmp_path / "gone.pass")}, f"mqtt.password_file: {tmp_path / 'gone.pass'}: does not exist"),
    ]
    for mqtt, words in cases:
        out = cli("config", "check", str(config(tmp_path, **mqtt)))
        assert out.returncode == 2 and words in out.stderr, (mqtt, out.stderr)
    ok = cli("config", "check", str(config(tmp_path, ca_file=str(good_cert), cert_file=str(good_cert), key_file=str(good_key))))
    assert ok.returncode == 0, ok.stderr


def test_run_refuses_a_missing_file_naming_it(tmp_path):
    out = cli("run", "--config", str(config(tmp_path, ca_file=str(tmp_path / "nope.crt"))))
    assert out.returncode == 2 and f"mqtt.ca_file: {tmp_path / 'nope.crt'}: does not exist" in out.stderr
    assert "Traceback" not in out.stderr and "FileNotFoundError" not in out.stderr
