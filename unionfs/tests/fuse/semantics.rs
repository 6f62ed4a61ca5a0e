//! One test per section of docs/SEMANTICS.md (same names).

use std::os::unix::fs::MetadataExt;

use crate::common::*;

#[test]
fn rootless_lookup_is_top_down() {
    if !fuse_available("rootless_lookup_is_top_down") {
        return;
    }
    let s = Scratch::new();
    let m = mount_standard(&s, false);
    assert_eq!(
        std::fs::read(m.path().join("shadowed")).unwrap(),
        b"from l1"
    );
    assert_eq!(
        std::fs::read(m.path().join("etc/os-release")).unwrap(),
        b"NAME=strata-test\n"
    );
    assert_eq!(ls(&m.path().join("dir")), ["bottom", "top"]);
    assert_eq!(ls(&m.path().join("opq")), ["visible"]);
    assert!(!m.path().join("dir/gone").exists());
    assert_eq!(
        std::fs::read_link(m.path().join("link")).unwrap().to_str(),
        Some("etc/os-release")
    );
    m.unmount().unwrap();
}
