//! Export bytes of Docs Editors files: real (small) ODF and OOXML zips, PDF, RTF, text, CSV,
//! SVG, PNG and JPEG, deterministic per (file id, version, format). The "Big report" pads every
//! format to exactly its configured size.

use super::domain::{GFile, DOCUMENT, DRAWING, PRESENTATION, SPREADSHEET};
use crate::graph::content::{mix, ContentKind, ContentSpec};

const ODT: &str = "application/vnd.oasis.opendocument.text";
const ODS: &str = "application/x-vnd.oasis.opendocument.spreadsheet";
const ODS_ALT: &str = "application/vnd.oasis.opendocument.spreadsheet";
const ODP: &str = "application/vnd.oasis.opendocument.presentation";
const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const PPTX: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";

const DOC_FORMATS: &[(&str, &str)] = &[
    ("application/rtf", "rtf"),
    (ODT, "odt"),
    ("text/plain", "txt"),
    ("application/pdf", "pdf"),
    (DOCX, "docx"),
    ("application/zip", "zip"),
    ("application/epub+zip", "epub"),
];
const SHEET_FORMATS: &[(&str, &str)] = &[
    ("text/tab-separated-values", "tsv"),
    (ODS, "ods"),
    ("application/pdf", "pdf"),
    (XLSX, "xlsx"),
    ("text/csv", "csv"),
];
const SLIDE_FORMATS: &[(&str, &str)] = &[
    (ODP, "odp"),
    ("application/pdf", "pdf"),
    (PPTX, "pptx"),
    ("text/plain", "txt"),
];
const DRAWING_FORMATS: &[(&str, &str)] = &[
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("application/pdf", "pdf"),
    ("image/jpeg", "jpg"),
];

/// The export formats (MIME type, extension) of a native MIME type, as `exportLinks` lists them.
pub(crate) fn formats(native_mime: &str) -> &'static [(&'static str, &'static str)] {
    match native_mime {
        DOCUMENT => DOC_FORMATS,
        SPREADSHEET => SHEET_FORMATS,
        PRESENTATION => SLIDE_FORMATS,
        DRAWING => DRAWING_FORMATS,
        _ => &[],
    }
}

/// The `exportLinks` path kind of a native MIME type.
pub(crate) fn link_kind(native_mime: &str) -> &'static str {
    match native_mime {
        SPREADSHEET => "spreadsheets",
        PRESENTATION => "presentation",
        DRAWING => "drawings",
        _ => "documents",
    }
}

/// The extension of `mime` for the file, accepting the ODS MIME type without `x-` as well.
pub(crate) fn extension(f: &GFile, mime: &str) -> Option<&'static str> {
    let mime = if mime == ODS_ALT { ODS } else { mime };
    f.export_formats()
        .iter()
        .find(|(m, _)| *m == mime)
        .map(|(_, e)| *e)
}

/// The MIME type of an extension for the file.
pub(crate) fn mime_of_ext(f: &GFile, ext: &str) -> Option<&'static str> {
    f.export_formats()
        .iter()
        .find(|(_, e)| e.eq_ignore_ascii_case(ext))
        .map(|(m, _)| *m)
}

/// The export of `f` as `mime`, or None if that conversion is not supported.
pub(crate) fn render(f: &GFile, mime: &str) -> Option<Vec<u8>> {
    let ext = extension(f, mime)?;
    let key = mix(f.content.key ^ 0xE4_9017);
    let natural = 2_000 + (key % 40_000) as usize;
    let title = xml_escape(&f.name);
    match f.export_len {
        None => Some(build(ext, &title, key, natural)),
        Some(target) => {
            // Every format's size grows by exactly one byte per byte of text.
            let base = build(ext, &title, key, 0).len() as u64;
            let text = target.saturating_sub(base) as usize;
            Some(build(ext, &title, key, text))
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `n` bytes of seeded text (letters, digits, spaces, newlines: safe in XML, CSV, RTF, PDF
/// comments).
fn text(key: u64, n: usize) -> String {
    let mut b = vec![0u8; n];
    ContentSpec {
        key,
        len: n as u64,
        kind: ContentKind::Text,
    }
    .fill(0, &mut b);
    String::from_utf8(b).expect("ASCII text")
}

fn build(ext: &str, title: &str, key: u64, n: usize) -> Vec<u8> {
    let body = text(key, n);
    match ext {
        "odt" | "ods" | "odp" => {
            let media = match ext {
                "odt" => "application/vnd.oasis.opendocument.text",
                "ods" => "application/vnd.oasis.opendocument.spreadsheet",
                _ => "application/vnd.oasis.opendocument.presentation",
            };
            let manifest = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<manifest:manifest xmlns:manifest=\"urn:oasis:names:tc:opendocument:xmlns:manifest:1.0\" manifest:version=\"1.2\"><manifest:file-entry manifest:full-path=\"/\" manifest:media-type=\"{media}\"/><manifest:file-entry manifest:full-path=\"content.xml\" manifest:media-type=\"text/xml\"/></manifest:manifest>\n"
            );
            let content = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<office:document-content xmlns:office=\"urn:oasis:names:tc:opendocument:xmlns:office:1.0\" xmlns:text=\"urn:oasis:names:tc:opendocument:xmlns:text:1.0\" office:version=\"1.2\"><office:body><office:text><text:h>{title}</text:h><text:p>{body}</text:p></office:text></office:body></office:document-content>\n"
            );
            zip(&[
                ("mimetype", media.as_bytes()),
                ("META-INF/manifest.xml", manifest.as_bytes()),
                ("content.xml", content.as_bytes()),
            ])
        }
        "docx" | "xlsx" | "pptx" => {
            let (main, ct) = match ext {
                "docx" => ("word/document.xml", "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"),
                "xlsx" => ("xl/workbook.xml", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"),
                _ => ("ppt/presentation.xml", "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml"),
            };
            let types = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"><Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/><Default Extension=\"xml\" ContentType=\"application/xml\"/><Override PartName=\"/{main}\" ContentType=\"{ct}\"/></Types>"
            );
            let rels = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" Target=\"{main}\"/></Relationships>"
            );
            let doc = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<document><title>{title}</title><body>{body}</body></document>"
            );
            zip(&[
                ("[Content_Types].xml", types.as_bytes()),
                ("_rels/.rels", rels.as_bytes()),
                (main, doc.as_bytes()),
            ])
        }
        "epub" => {
            let container = "<?xml version=\"1.0\"?>\n<container version=\"1.0\" xmlns=\"urn:oasis:names:tc:opendocument:xmlns:container\"><rootfiles><rootfile full-path=\"content.opf\" media-type=\"application/oebps-package+xml\"/></rootfiles></container>";
            let opf = format!("<?xml version=\"1.0\"?>\n<package xmlns=\"http://www.idpf.org/2007/opf\" version=\"3.0\"><metadata><dc:title xmlns:dc=\"http://purl.org/dc/elements/1.1/\">{title}</dc:title></metadata><manifest><item id=\"t\" href=\"text.xhtml\" media-type=\"application/xhtml+xml\"/></manifest><spine><itemref idref=\"t\"/></spine></package>");
            let xhtml = format!("<?xml version=\"1.0\"?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\"><head><title>{title}</title></head><body><p>{body}</p></body></html>");
            zip(&[
                ("mimetype", b"application/epub+zip"),
                ("META-INF/container.xml", container.as_bytes()),
                ("content.opf", opf.as_bytes()),
                ("text.xhtml", xhtml.as_bytes()),
            ])
        }
        "zip" => {
            let html = format!("<html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1><p>{body}</p></body></html>");
            zip(&[("document.html", html.as_bytes())])
        }
        "pdf" => pdf(title, &body),
        "rtf" => format!("{{\\rtf1\\ansi{{\\fonttbl\\f0\\fswiss Helvetica;}}\\f0\\pard {title}\\par\n{body}}}\n").into_bytes(),
        "txt" => format!("\u{feff}{title}\r\n\r\n{body}").into_bytes(),
        "csv" => format!("{title}\n{body}").into_bytes(),
        "tsv" => format!("{title}\t\n{body}").into_bytes(),
        "svg" => format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"480\"><title>{title}</title><desc>{body}</desc><rect x=\"10\" y=\"10\" width=\"100\" height=\"50\" fill=\"#4285f4\"/></svg>\n").into_bytes(),
        "png" => png(title, &body),
        "jpg" => jpeg(title, &body),
        _ => Vec::new(),
    }
}

/// A zip of stored (uncompressed) entries, in order (so `mimetype` can come first, as ODF and
/// EPUB require).
fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    // 2024-01-01 00:00 in DOS time.
    let (dos_time, dos_date): (u16, u16) = (0, ((2024 - 1980) << 9) | (1 << 5) | 1);
    for (name, data) in entries {
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let len = data.len() as u32;
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&20u16.to_le_bytes()); // version needed
        local.extend_from_slice(&0u16.to_le_bytes()); // flags
        local.extend_from_slice(&0u16.to_le_bytes()); // stored
        local.extend_from_slice(&dos_time.to_le_bytes());
        local.extend_from_slice(&dos_date.to_le_bytes());
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&len.to_le_bytes());
        local.extend_from_slice(&len.to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&local);
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by
        central.extend_from_slice(&local[4..30]);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    let cd_len = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A one-page PDF 1.4 showing the title, with the text in a stream object of its own. Lengths
/// and offsets are written with fixed widths so the size grows exactly with the text.
fn pdf(title: &str, body: &str) -> Vec<u8> {
    let title: String = title
        .chars()
        .map(|c| {
            if c.is_ascii() && c != '(' && c != ')' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let stream = format!("BT /F1 18 Tf 72 720 Td ({title}) Tj ET\n");
    let objs = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {:010} >>\nstream\n{stream}endstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
        // The text, in a stream object of its own (unreferenced, so viewers skip it).
        format!("<< /Length {:010} >>\nstream\n{body}\nendstream", body.len() + 1),
    ];
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref:010}\n%%EOF\n",
            objs.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&h.finalize().to_be_bytes());
}

/// A 1×1 grey PNG carrying the title and text in a `tEXt` chunk.
fn png(title: &str, body: &str) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    let mut t = b"Title\0".to_vec();
    t.extend_from_slice(title.as_bytes());
    t.push(b' ');
    t.extend_from_slice(body.as_bytes());
    png_chunk(&mut out, b"tEXt", &t);
    // zlib, one stored block: filter byte 0, pixel 0; Adler-32 of [0, 0] is 0x00020001.
    png_chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x02, 0x00, 0xfd, 0xff, 0, 0, 0x00, 0x02, 0x00, 0x01,
        ],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A JPEG-shaped file: SOI, JFIF APP0, comments with the text, EOI.
fn jpeg(title: &str, body: &str) -> Vec<u8> {
    let mut out = vec![0xff, 0xd8];
    out.extend_from_slice(&[
        0xff, 0xe0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
    ]);
    let text = format!("{title}\n{body}");
    for chunk in text.as_bytes().chunks(60_000) {
        out.extend_from_slice(&[0xff, 0xfe]);
        out.extend_from_slice(&((chunk.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&[0xff, 0xd9]);
    out
}
