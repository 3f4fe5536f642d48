//! What the tests that run install.sh on a copied device root share.

use std::path::Path;
use std::process::Command;

/// Copies this machine's /etc to `root/etc` and adds the users and groups aziot-edge's packages
/// create (`aziotcs`, `aziotks`), which install.sh gives the certificate and key files to.
pub fn copy_etc_with_aziot_users(root: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg("/etc")
        .arg(root.join("etc"))
        .status()
        .unwrap();
    assert!(status.success(), "copying /etc");
    for (file, line) in [
        (
            "passwd",
            "aziotcs:x:990:990::/nonexistent:/usr/sbin/nologin\naziotks:x:991:991::/nonexistent:/usr/sbin/nologin\n",
        ),
        ("group", "aziotcs:x:990:\naziotks:x:991:\n"),
    ] {
        let path = root.join("etc").join(file);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(line);
        std::fs::write(&path, text).unwrap();
    }
}
