"""A throwaway OpenLDAP server for the directory tests: ``slapd -f`` with a generated
``slapd.conf`` (mdb backend) in a temporary folder, on a free port, loaded with :data:`LDIF`.

The test directory (``dc=example,dc=org``):

- users (ou=people): alice, bob, carol, dave (disabled: ``employeeType: disabled``), erin,
  and ``sync`` (the node's bind account, ou=system, not a user);
- groups (ou=groups): ``legal`` (alice, and the group ``legal-paris``), ``legal-paris`` (carol),
  ``traders`` (bob, erin), ``staff`` (everyone but dave, via ``legal`` and ``traders``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, Connection, Server

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA = Path("/etc/ldap/schema")
BASE = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{BASE}"
ROOT_PW = "root-secret"
SYNC_DN = f"cn=sync,ou=system,{BASE}"
SYNC_PW = "sync-secret"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw",
             "erin": "erin-pw"}  # fmt: skip


def available() -> bool:
    return os.path.exists(SLAPD) and os.path.exists(SLAPADD) and SCHEMA.is_dir()


def _person(uid: str, name: str, disabled: bool = False) -> str:
    extra = "employeeType: disabled\n" if disabled else ""
    return (
        f"dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {name}\n"
        f"sn: {name.split()[-1]}\nmail: {uid}@example.org\nuserPassword: {PASSWORDS[uid]}\n"
        f"{extra}\n"
    )


def _group(cn: str, members: list[str]) -> str:
    lines = "".join(f"member: {m}\n" for m in members)
    return f"dn: cn={cn},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {cn}\n{lines}\n"


def user_dn(uid: str) -> str:
    return f"uid={uid},ou=people,{BASE}"


def group_dn(cn: str) -> str:
    return f"cn={cn},ou=groups,{BASE}"


LDIF = (
    f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
    f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n"
    f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n"
    f"dn: ou=system,{BASE}\nobjectClass: organizationalUnit\nou: system\n\n"
    f"dn: {SYNC_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
    f"cn: sync\nuserPassword: {SYNC_PW}\n\n"
    + _person("alice", "Alice Adams")
    + _person("bob", "Bob Brown")
    + _person("carol", "Carol Clark")
    + _person("dave", "Dave Davis", disabled=True)
    + _person("erin", "Erin Evans")
    + _group("legal-paris", [user_dn("carol")])
    + _group("legal", [user_dn("alice"), group_dn("legal-paris")])
    + _group("traders", [user_dn("bob"), user_dn("erin")])
    + _group("staff", [group_dn("legal"), group_dn("traders")])
)

CONF = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
include {schema}/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="{sync}" read by * none
database mdb
{limits}maxsize 33554432
suffix "{base}"
rootdn "{root}"
rootpw {rootpw}
directory {dir}/db
index objectClass eq
index uid eq
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Slapd:
    """One slapd process and its data; :meth:`start` again after :meth:`kill` keeps the data."""

    def __init__(
        self,
        root: Path,
        tls: tuple[Path, Path, Path] | None = None,
        *,
        size_limit: bool = False,
        ldif: str = LDIF,
    ) -> None:
        """``tls``: (CA, certificate, key) PEM files: then ldaps:// on :attr:`tls_port` too,
        and StartTLS on the plain port."""
        self.root = root
        self.port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.tls_port = _free_port() if tls else 0
        self.conf = root / "slapd.conf"
        (root / "db").mkdir(parents=True)
        conf = CONF.format(
            schema=SCHEMA,
            dir=root,
            base=BASE,
            root=ROOT_DN,
            rootpw=ROOT_PW,
            sync=SYNC_DN,
            limits=(
                ""
                if size_limit
                else f'limits dn.exact="{SYNC_DN}" size=unlimited size.pr=unlimited\n'
            ),
        )
        if tls:
            ca, cert, key = tls
            conf = (
                f"TLSCACertificateFile {ca}\nTLSCertificateFile {cert}\n"
                f"TLSCertificateKeyFile {key}\n" + conf
            )
        self.conf.write_text(conf)
        (root / "data.ldif").write_text(ldif)
        subprocess.run(
            [SLAPADD, "-f", str(self.conf), "-l", str(root / "data.ldif")],
            check=True,
            capture_output=True,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        urls = f"{self.url}/" + (f" ldaps://127.0.0.1:{self.tls_port}/" if self.tls_port else "")
        self.proc = subprocess.Popen(
            [SLAPD, "-f", str(self.conf), "-h", urls, "-d", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slapd exited with {self.proc.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("slapd did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @contextmanager
    def admin(self) -> Iterator[Connection]:
        conn = Connection(Server(self.url), ROOT_DN, ROOT_PW, auto_bind=True)
        try:
            yield conn
        finally:
            conn.unbind()  # leaving a ``with Connection`` block leaves it bound

    def modify(self, dn: str, changes: dict[str, list[tuple[str, list[str]]]]) -> None:
        with self.admin() as conn:
            ops = {"add": MODIFY_ADD, "delete": MODIFY_DELETE, "replace": MODIFY_REPLACE}
            assert conn.modify(dn, {a: [(ops[o], v) for o, v in c] for a, c in changes.items()}), (
                conn.result
            )

    def delete(self, dn: str) -> None:
        with self.admin() as conn:
            assert conn.delete(dn), conn.result

    def add_user(self, uid: str, name: str, password: str) -> None:
        with self.admin() as conn:
            ok = conn.add(
                user_dn(uid),
                ["inetOrgPerson"],
                {"uid": uid, "cn": name, "sn": name, "userPassword": password},
            )
            assert ok, conn.result
