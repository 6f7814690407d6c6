//! Real datasets from disk: MNIST / Fashion-MNIST IDX files (raw or gzip) and CIFAR-10 binary
//! batches. Files are read whole into memory (MNIST is 47 MB, CIFAR-10 150 MB) and checked up
//! front — sizes exactly as the headers say, one label per image, every label a class — so a
//! file changed or truncated later cannot bring the run down (as a memory map would, with
//! SIGBUS). Every problem is an error naming the file. The parsers take bytes
//! ([`IdxDataset::parse`], [`Cifar10::parse`]), so they can be fed anything directly.

use super::Dataset;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a dataset file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct DataError {
    pub path: PathBuf,
    pub problem: String,
}

fn error(path: &Path, problem: impl Into<String>) -> DataError {
    DataError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// The classes of MNIST, Fashion-MNIST and CIFAR-10.
const CLASSES: usize = 10;

/// The most bytes a `.gz` dataset file may inflate to (MNIST is 47 MB, CIFAR-10 150 MB): a
/// gzip bomb stops here instead of filling memory.
const MAX_INFLATED_BYTES: u64 = 8 << 30;

/// The bytes of a file, inflated when its name ends in `.gz` (see [`read_capped`]).
fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    read_capped(path, MAX_INFLATED_BYTES)
}

/// The bytes of a regular file, at most its size on disk, inflated when its name ends in
/// `.gz` and refused when that gives more than `max_inflated` bytes. A path that is not a
/// regular file (a device such as /dev/zero, a FIFO, a directory) is refused before it is
/// opened, as opening or reading it could block or never end.
fn read_capped(path: &Path, max_inflated: u64) -> Result<Vec<u8>, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| error(path, format!("cannot open: {e}")))?;
    if !meta.is_file() {
        return Err(error(
            path,
            "not a regular file (expected a dataset file, not a device, FIFO or directory)",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| error(path, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .take(max_inflated.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| error(path, format!("not a valid gzip file: {e}")))?;
        if bytes.len() as u64 > max_inflated {
            return Err(error(
                path,
                format!("inflates to more than {max_inflated} bytes, more than any dataset file ditmoe reads"),
            ));
        }
    } else {
        std::io::BufReader::new(file)
            .take(meta.len())
            .read_to_end(&mut bytes)
            .map_err(|e| error(path, format!("cannot read: {e}")))?;
    }
    Ok(bytes)
}

/// Parses an IDX header: magic 0x00000800 | type (0x08 = u8) << 8 | rank, then `rank`
/// big-endian u32 sizes, then exactly the product of the sizes in bytes. Returns the sizes
/// and the header length.
fn idx_header(bytes: &[u8], path: &Path, rank: usize) -> Result<(Vec<usize>, usize), DataError> {
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(error(
            path,
            format!(
                "truncated: {} bytes, an IDX header of rank {rank} needs {header}",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    let expected = 0x0800 | rank as u32;
    if magic != expected {
        return Err(error(path, format!("not an IDX file of unsigned bytes with {rank} dimension(s): magic {magic:#010x}, expected {expected:#010x}")));
    }
    let dims = (0..rank)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect::<Vec<_>>();
    let needed = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|data| data.checked_add(header));
    match needed {
        Some(needed) if needed == bytes.len() => Ok((dims, header)),
        Some(needed) if needed > bytes.len() => Err(error(
            path,
            format!(
                "truncated: {} bytes, the header ({dims:?}) promises {needed}",
                bytes.len()
            ),
        )),
        Some(needed) => Err(error(
            path,
            format!(
                "{} bytes, but the header ({dims:?}) promises {needed}: trailing data",
                bytes.len()
            ),
        )),
        None => Err(error(
            path,
            format!("the header's sizes {dims:?} overflow: not an IDX file"),
        )),
    }
}

/// MNIST or Fashion-MNIST: an images file (IDX rank 3) and a labels file (IDX rank 1).
pub struct IdxDataset {
    /// The pixels of every image, one after the other (the images file after its header).
    pixels: Vec<u8>,
    labels: Vec<u8>,
    count: usize,
    height: usize,
    width: usize,
    name: String,
}

impl IdxDataset {
    pub fn open(images: &Path, labels: &Path) -> Result<Self, DataError> {
        Self::parse(&read(images)?, images, &read(labels)?, labels)
    }

    /// The dataset of the bytes of an images file and a labels file (the paths name them in
    /// errors).
    pub fn parse(
        image_bytes: &[u8],
        images: &Path,
        label_bytes: &[u8],
        labels: &Path,
    ) -> Result<Self, DataError> {
        let (dims, image_offset) = idx_header(image_bytes, images, 3)?;
        let (label_dims, label_offset) = idx_header(label_bytes, labels, 1)?;
        if label_dims[0] != dims[0] {
            return Err(error(
                labels,
                format!(
                    "{} labels for {} images in {}",
                    label_dims[0],
                    dims[0],
                    images.display()
                ),
            ));
        }
        check_labels(label_bytes[label_offset..].iter().copied(), labels)?;
        Ok(IdxDataset {
            count: dims[0],
            height: dims[1],
            width: dims[2],
            pixels: image_bytes[image_offset..].to_vec(),
            labels: label_bytes[label_offset..].to_vec(),
            name: images.display().to_string(),
        })
    }
}

/// An error naming `path` unless every label is a class.
fn check_labels(labels: impl Iterator<Item = u8>, path: &Path) -> Result<(), DataError> {
    match labels.enumerate().find(|&(_, l)| l as usize >= CLASSES) {
        Some((i, bad)) => Err(error(
            path,
            format!("label {bad} of item {i} is outside 0..{CLASSES}"),
        )),
        None => Ok(()),
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.count
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn image_shape(&self) -> (usize, usize, usize) {
        (1, self.height, self.width)
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn get(&self, index: usize) -> (Vec<f32>, usize) {
        let size = self.height * self.width;
        let start = index * size;
        let pixels = self.pixels[start..start + size]
            .iter()
            .map(|&p| p as f32 / 127.5 - 1.0)
            .collect();
        (pixels, self.labels[index] as usize)
    }
}

/// CIFAR-10 binary batches: records of 1 label byte + 3072 pixel bytes (R, G, B planes of
/// 32×32).
pub struct Cifar10 {
    files: Vec<Vec<u8>>,
    per_file: Vec<usize>,
}

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

impl Cifar10 {
    pub fn open(paths: &[PathBuf]) -> Result<Self, DataError> {
        let batches = paths
            .iter()
            .map(|path| read(path))
            .collect::<Result<Vec<_>, DataError>>()?;
        let named: Vec<(&[u8], &Path)> = batches
            .iter()
            .zip(paths)
            .map(|(bytes, path)| (bytes.as_slice(), path.as_path()))
            .collect();
        Self::parse(&named)
    }

    /// The dataset of the bytes of batch files (each with the path that names it in errors).
    pub fn parse(batches: &[(&[u8], &Path)]) -> Result<Self, DataError> {
        if batches.is_empty() {
            return Err(error(
                Path::new("<cifar10>"),
                "no batch files given (expected data_batch_1.bin …)",
            ));
        }
        let mut files = Vec::new();
        let mut per_file = Vec::new();
        for &(bytes, path) in batches {
            if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
                return Err(error(path, format!("{} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records (truncated or not a CIFAR-10 batch)", bytes.len())));
            }
            check_labels(bytes.chunks(CIFAR_RECORD).map(|r| r[0]), path)
                .map_err(|e| error(path, format!("{}: not a CIFAR-10 batch", e.problem)))?;
            per_file.push(bytes.len() / CIFAR_RECORD);
            files.push(bytes.to_vec());
        }
        Ok(Cifar10 { files, per_file })
    }
}

impl Dataset for Cifar10 {
    fn len(&self) -> usize {
        self.per_file.iter().sum()
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn image_shape(&self) -> (usize, usize, usize) {
        (3, 32, 32)
    }
    fn name(&self) -> String {
        "CIFAR-10".to_string()
    }
    fn get(&self, mut index: usize) -> (Vec<f32>, usize) {
        let mut file = 0;
        while index >= self.per_file[file] {
            index -= self.per_file[file];
            file += 1;
        }
        let record = &self.files[file][index * CIFAR_RECORD..(index + 1) * CIFAR_RECORD];
        (
            record[1..]
                .iter()
                .map(|&p| p as f32 / 127.5 - 1.0)
                .collect(),
            record[0] as usize,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ditmoe-data-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_fifo_or_a_device_is_refused_unopened_and_a_gzip_bomb_is_capped() {
        let fifo = dir().join("fifo-images");
        let _ = std::fs::remove_file(&fifo);
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo reads it and returns.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        for path in [fifo.as_path(), Path::new("/dev/zero")] {
            let err = read(path).expect_err("refused").to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        std::fs::remove_file(&fifo).unwrap();

        let bomb = dir().join("bomb.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 1 << 20]).unwrap();
        std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
        let err = read_capped(&bomb, 1000).expect_err("capped").to_string();
        assert!(
            err.contains("bomb.gz: inflates to more than 1000 bytes"),
            "{err}"
        );
        assert_eq!(read_capped(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        std::fs::remove_file(&bomb).unwrap();
    }

    fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, rank];
        dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
        bytes.extend(data);
        bytes
    }

    #[test]
    fn idx_files_raw_and_gzip() {
        let d = dir();
        let pixels: Vec<u8> = (0..2 * 3 * 2).map(|i| (i * 20) as u8).collect();
        std::fs::write(d.join("img"), idx(3, &[2, 3, 2], &pixels)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&idx(1, &[2], &[7, 3])).unwrap();
        std::fs::write(d.join("lbl.gz"), gz.finish().unwrap()).unwrap();
        let data = IdxDataset::open(&d.join("img"), &d.join("lbl.gz")).unwrap();
        assert_eq!((data.len(), data.image_shape()), (2, (1, 3, 2)));
        let (image, label) = data.get(1);
        assert_eq!(label, 3);
        assert_eq!(image[0], 120.0 / 127.5 - 1.0);

        std::fs::write(d.join("short"), &idx(3, &[2, 3, 2], &pixels)[..20]).unwrap();
        let err = IdxDataset::open(&d.join("short"), &d.join("lbl.gz"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("short") && err.contains("truncated"), "{err}");
        std::fs::write(d.join("labels-as-images"), idx(1, &[20], &[0; 20])).unwrap();
        let err = IdxDataset::open(&d.join("labels-as-images"), &d.join("img"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("magic 0x00000801, expected 0x00000803"),
            "{err}"
        );
        let err = IdxDataset::open(&d.join("missing"), &d.join("img"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("missing") && err.contains("cannot open"),
            "{err}"
        );
        std::fs::write(d.join("bad.gz"), b"not gzip").unwrap();
        assert!(IdxDataset::open(&d.join("img"), &d.join("bad.gz"))
            .err()
            .unwrap()
            .to_string()
            .contains("gzip"));
        std::fs::write(d.join("lbl3"), idx(1, &[3], &[1, 2, 3])).unwrap();
        assert!(IdxDataset::open(&d.join("img"), &d.join("lbl3"))
            .err()
            .unwrap()
            .to_string()
            .contains("3 labels for 2 images"));
    }

    #[test]
    fn idx_sizes_and_labels_are_checked_up_front() {
        let (images, labels) = (Path::new("images"), Path::new("labels"));
        let pixels = idx(3, &[2, 2, 2], &[9; 8]);
        let parse = |image_bytes: &[u8], label_bytes: &[u8]| {
            IdxDataset::parse(image_bytes, images, label_bytes, labels)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(parse(&pixels, &idx(1, &[2], &[0, 9])), None);
        let mut longer = pixels.clone();
        longer.push(0);
        let err = parse(&longer, &idx(1, &[2], &[0, 9])).unwrap();
        assert!(
            err.starts_with("images: ") && err.contains("trailing"),
            "{err}"
        );
        let err = parse(&pixels, &idx(1, &[2], &[0, 10])).unwrap();
        assert!(
            err.starts_with("labels: ") && err.contains("label 10 of item 1"),
            "{err}"
        );
        let huge = idx(3, &[u32::MAX; 3], &[]);
        let err = parse(&huge, &idx(1, &[2], &[0, 9])).unwrap();
        assert!(err.contains("overflow"), "{err}");
    }

    #[test]
    fn a_file_cut_after_opening_does_not_touch_the_loaded_data() {
        let d = dir();
        let pixels: Vec<u8> = (0..4 * 2 * 2).map(|i| i as u8).collect();
        std::fs::write(d.join("cut-img"), idx(3, &[4, 2, 2], &pixels)).unwrap();
        std::fs::write(d.join("cut-lbl"), idx(1, &[4], &[1, 2, 3, 4])).unwrap();
        let data = IdxDataset::open(&d.join("cut-img"), &d.join("cut-lbl")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(d.join("cut-img"))
            .unwrap()
            .set_len(10)
            .unwrap();
        assert_eq!(
            data.get(3),
            (
                vec![
                    12.0 / 127.5 - 1.0,
                    13.0 / 127.5 - 1.0,
                    14.0 / 127.5 - 1.0,
                    15.0 / 127.5 - 1.0
                ],
                4
            )
        );
    }

    #[test]
    fn cifar_batches() {
        let d = dir();
        let mut batch = Vec::new();
        for label in [4u8, 9] {
            batch.push(label);
            batch.extend((0..3072).map(|i| (i % 256) as u8));
        }
        std::fs::write(d.join("b1.bin"), &batch).unwrap();
        std::fs::write(d.join("b2.bin"), &batch[..CIFAR_RECORD]).unwrap();
        let data = Cifar10::open(&[d.join("b1.bin"), d.join("b2.bin")]).unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data.get(1).1, 9);
        assert_eq!(data.get(2).1, 4);
        assert_eq!(data.get(2).0[1], 1.0 / 127.5 - 1.0);
        std::fs::write(d.join("cut.bin"), &batch[..100]).unwrap();
        let err = Cifar10::open(&[d.join("cut.bin")])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cut.bin") && err.contains("truncated"),
            "{err}"
        );
        let mut bad = batch.clone();
        bad[0] = 200;
        std::fs::write(d.join("bad.bin"), &bad).unwrap();
        assert!(Cifar10::open(&[d.join("bad.bin")])
            .err()
            .unwrap()
            .to_string()
            .contains("label 200"));
    }
}
