//! Bags from other tools and older BagIt versions: 0.97 with md5 and `*` markers, 0.93 with
//! package-info.txt, ISO-8859-1 and UTF-16 tag files, literal `%` in pre-1.0 names.

mod verify_support;

use ferry_archive::verify::{ProblemKind as K, Status, VerifyMode};
use verify_support::*;

fn old_bag(version: &str, info_name: &str) -> TestBag {
    let bag = TestBag::empty();
    let files = sample_files();
    let mut manifest = String::new();
    for (rel, bytes) in &files {
        bag.write(rel, bytes);
        // md5deep / coreutils style: binary-mode `*` marker before the path.
        manifest.push_str(&format!("{} *{rel}\n", digest(Md5, bytes)));
    }
    bag.write("manifest-md5.txt", manifest.as_bytes());
    bag.write(
        "bagit.txt",
        format!("BagIt-Version: {version}\nTag-File-Character-Encoding: UTF-8\n").as_bytes(),
    );
    let octets: usize = files.iter().map(|(_, b)| b.len()).sum();
    bag.write(
        info_name,
        format!(
            "Payload-Oxum: {octets}.{}\nBagging-Date: 2009-01-01\n",
            files.len()
        )
        .as_bytes(),
    );
    bag
}

#[test]
fn bagit_0_97_with_md5_and_star_markers() {
    let bag = old_bag("0.97", "bag-info.txt");
    bag.write_tagmanifest(Md5);
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    assert_eq!(r.bagit_version.as_deref(), Some("0.97"));
    assert_eq!(r.algorithms, ["md5"]);
    flip_bit(&bag.path("data/a.txt"), 0);
    assert_only(&bag.verify(), &[(K::DigestMismatch, "data/a.txt")]);
}

#[test]
fn bagit_0_93_with_package_info() {
    let bag = old_bag("0.93", "package-info.txt");
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    assert!(r.warnings.is_empty(), "{r}");
    // package-info.txt is where 0.93 keeps Payload-Oxum: a wrong one is found there.
    bag.write("package-info.txt", b"Payload-Oxum: 1.1\n");
    assert_only(
        &check(&bag.root, VerifyMode::Fast),
        &[(K::PayloadOxumMismatch, "package-info.txt")],
    );
    // The 1.0 name in a 0.93 bag is read, with a warning.
    bag.remove("package-info.txt");
    bag.write("bag-info.txt", b"Payload-Oxum: 1.1\n");
    let r = bag.verify();
    assert_only(&r, &[(K::PayloadOxumMismatch, "bag-info.txt")]);
    assert_warning(&r, K::BagInfoFileName, "bag-info.txt");
}

#[test]
fn iso_8859_1_tag_files() {
    let bag = TestBag::empty();
    let name = "data/caf\u{e9} \u{e6}\u{f8}\u{e5}.txt";
    bag.write(name, b"latin");
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: ISO-8859-1\n",
    );
    let mut manifest = format!("{} ", digest(Sha256, b"latin")).into_bytes();
    manifest.extend_from_slice(b"data/caf\xe9 \xe6\xf8\xe5.txt\n");
    bag.write("manifest-sha256.txt", &manifest);
    bag.write(
        "bag-info.txt",
        b"Contact-Name: Bj\xf8rn\nPayload-Oxum: 5.1\n",
    );
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    assert_eq!(r.tag_file_encoding.as_deref(), Some("ISO-8859-1"));
    // Read as UTF-8, the same bytes name no file and are not valid text.
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
    );
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_eq!(r.status, Status::Invalid);
    assert_problem(&r, K::TagFileEncoding, "manifest-sha256.txt");
    assert_problem(&r, K::UnlistedFile, name);
}

#[test]
fn utf16_tag_files_with_bom() {
    let bag = TestBag::empty();
    let name = "data/\u{3b1}\u{3b2}\u{3b3}.txt";
    bag.write(name, b"greek");
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-16\n",
    );
    let utf16be = |text: &str| -> Vec<u8> {
        let mut out = vec![0xfe, 0xff];
        for u in text.encode_utf16() {
            out.extend(u.to_be_bytes());
        }
        out
    };
    bag.write(
        "manifest-sha256.txt",
        &utf16be(&format!("{} {name}\r\n", digest(Sha256, b"greek"))),
    );
    bag.write("bag-info.txt", &utf16be("Payload-Oxum: 5.1\r\n"));
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    bag.write("bag-info.txt", &utf16be("Payload-Oxum: 6.1\r\n"));
    assert_only(&bag.verify(), &[(K::PayloadOxumMismatch, "bag-info.txt")]);
}

#[test]
fn pre_1_0_names_are_literal_first_then_decoded() {
    let bag = TestBag::empty();
    // A file literally named with "%25" (bagit-python writes names unencoded), and one whose
    // manifest line was percent-encoded by a newer tool.
    bag.write("data/100%25.txt", b"literal");
    bag.write("data/50%.txt", b"decoded");
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n",
    );
    let manifest = format!(
        "{}  data/100%25.txt\n{}  data/50%25.txt\n",
        digest(Sha256, b"literal"),
        digest(Sha256, b"decoded")
    );
    bag.write("manifest-sha256.txt", manifest.as_bytes());
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    // In 1.0 the same manifest means "data/100%.txt", which does not exist.
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
    );
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::MissingFile, "data/100%.txt"),
            (K::UnlistedFile, "data/100%25.txt"),
        ],
    );
}
