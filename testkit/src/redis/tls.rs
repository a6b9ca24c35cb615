//! The CA and server certificate a TLS redis-server needs, made at start with the `openssl`
//! CLI (`$BATCHYARD_OPENSSL` or `openssl` on PATH).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The redis-server arguments to serve TLS only on `port` (`--port 0`) with the certificates
/// [`make_certificates`] wrote into `dir`; clients show no certificate.
pub(super) fn listen_tls_only(cmd: &mut Command, port: u16, dir: &Path) {
    cmd.args(["--port", "0", "--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args(["--tls-auth-clients", "no"]);
}

fn find_openssl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BATCHYARD_OPENSSL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("openssl"))
        .find(|p| p.is_file())
}

/// Writes `ca.pem`, `server.pem` and `server.key` (EC P-256, valid two days, the server's
/// names 127.0.0.1 and localhost) into `dir`: for a TLS server or cluster, or as a CA that
/// signed nothing a test trusts. False (after a skip line) when there is no
/// openssl outside CI; fails `test` in CI or when openssl fails.
pub fn make_certificates(test: &str, dir: &Path) -> bool {
    let Some(openssl) = find_openssl() else {
        crate::skip_or_fail(
            test,
            "the openssl CLI (needed for a TLS redis) was not found: apt-get install openssl",
        );
        return false;
    };
    // clientAuth too: cluster nodes present this certificate to each other on the bus, and
    // verify it there whatever `tls-auth-clients` says.
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", ext.display()));
    // One line a command, split on spaces (no argument holds one).
    let steps = [
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
         -out ca.pem -days 2 -subj /CN=batchyard-test-CA \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key \
         -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
         -days 2 -extfile server.ext",
    ];
    for step in steps {
        let args: Vec<&str> = step.split(' ').collect();
        let out = Command::new(&openssl)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", openssl.display()));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    true
}
