//! Packing a bundle as .zip (the tutorial's format) or .tar.gz (the `az iot edge devices create`
//! format), entries at the archive root, with each file's mode. Timestamps are fixed, so the
//! same bundle always packs to the same bytes.

use std::io::{Seek, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::{BundleError, BundleFile};

/// Modification time of every entry: 1980-01-01T00:00:00Z, the earliest time a zip can hold.
const ENTRY_MTIME: u64 = 315_532_800;

/// Archive formats of a downloaded bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    Zip,
    TarGz,
}

impl ArchiveFormat {
    /// The format an output path asks for: `.zip`, `.tar.gz` or `.tgz`.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".zip") {
            Some(Self::Zip)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Self::TarGz)
        } else {
            None
        }
    }
}

/// Writes `files` in `format`.
pub fn write_archive<W: Write + Seek>(
    format: ArchiveFormat,
    files: &[BundleFile],
    writer: W,
) -> Result<W, BundleError> {
    match format {
        ArchiveFormat::Zip => write_zip(files, writer),
        ArchiveFormat::TarGz => write_tar_gz(files, writer),
    }
}

/// Writes `files` as a zip (Deflate) with their Unix modes; returns the writer.
pub fn write_zip<W: Write + Seek>(files: &[BundleFile], writer: W) -> Result<W, BundleError> {
    let error = |e: &dyn std::fmt::Display| BundleError::Archive(e.to_string());
    let mut zip = zip::ZipWriter::new(writer);
    for file in files {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(file.mode)
            .last_modified_time(zip::DateTime::default());
        zip.start_file(file.path.as_str(), options)
            .map_err(|e| error(&e))?;
        zip.write_all(&file.contents).map_err(|e| error(&e))?;
    }
    zip.finish().map_err(|e| error(&e))
}

/// Writes `files` as a gzip-compressed tar with their modes (owner root); returns the writer.
pub fn write_tar_gz<W: Write>(files: &[BundleFile], writer: W) -> Result<W, BundleError> {
    let error = |e: std::io::Error| BundleError::Archive(e.to_string());
    let mut tar = tar::Builder::new(GzEncoder::new(writer, Compression::default()));
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(file.contents.len() as u64);
        header.set_mode(file.mode);
        header.set_mtime(ENTRY_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, &file.path, file.contents.as_slice())
            .map_err(error)?;
    }
    tar.into_inner().map_err(error)?.finish().map_err(error)
}
