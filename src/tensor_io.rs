//! Reading and writing safetensors files, with atomic writes and errors that name the file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{GrokError, Result};

/// The element types groklens reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    /// 32-bit floats (parameters, activations).
    F32(Vec<f32>),
    /// 64-bit floats (losses).
    F64(Vec<f64>),
    /// 64-bit integers (tokens, labels, split indices).
    I64(Vec<i64>),
    /// A dtype groklens does not read (e.g. TransformerLens's bool `attn.mask` buffer); an error only
    /// if the tensor is actually used.
    Unsupported(String),
}

/// A tensor in host memory: shape plus row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub data: HostData,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor {
            shape,
            data: HostData::F32(data),
        }
    }

    /// An i64 tensor.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        HostTensor {
            shape,
            data: HostData::I64(data),
        }
    }

    /// An f64 tensor.
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Self {
        HostTensor {
            shape,
            data: HostData::F64(data),
        }
    }

    /// The values as f32 (f64 is narrowed); an integer tensor is an error naming `name`.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        match &self.data {
            HostData::F32(v) => Ok(v.clone()),
            HostData::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            HostData::I64(_) => Err(GrokError::tensor(
                name,
                "is int64; a float tensor was expected",
            )),
            HostData::Unsupported(d) => Err(GrokError::tensor(
                name,
                format!("has dtype {d}; a float tensor was expected"),
            )),
        }
    }

    /// The values as i64; a float tensor is an error naming `name`.
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        match &self.data {
            HostData::I64(v) => Ok(v.clone()),
            _ => Err(GrokError::tensor(
                name,
                "is a float tensor; int64 was expected",
            )),
        }
    }

    /// The values as f64.
    pub fn to_f64(&self, name: &str) -> Result<Vec<f64>> {
        match &self.data {
            HostData::F64(v) => Ok(v.clone()),
            HostData::F32(v) => Ok(v.iter().map(|&x| x as f64).collect()),
            HostData::I64(_) => Err(GrokError::tensor(
                name,
                "is int64; a float tensor was expected",
            )),
            HostData::Unsupported(d) => Err(GrokError::tensor(
                name,
                format!("has dtype {d}; a float tensor was expected"),
            )),
        }
    }
}

/// A whole safetensors file: tensors by name plus string metadata.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: HashMap<String, HostTensor>,
    /// The `__metadata__` map.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// The tensor called `name`, or an error naming the file.
    pub fn require(&self, name: &str, path: &Path) -> Result<&HostTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| GrokError::file(path, format!("has no tensor named `{name}`")))
    }
}

/// Reads a safetensors file. A truncated or corrupt file is an error naming it.
pub fn read(path: &Path) -> Result<TensorFile> {
    let bytes =
        std::fs::read(path).map_err(|e| GrokError::file(path, format!("cannot read: {e}")))?;
    parse(&bytes, path)
}

fn parse(bytes: &[u8], path: &Path) -> Result<TensorFile> {
    let corrupt = |e: String| {
        GrokError::file(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => HostData::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::F64 => HostData::F64(
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::I64 => HostData::I64(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::I32 => HostData::I64(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            other => HostData::Unsupported(format!("{other:?}")),
        };
        tensors.insert(name, HostTensor { shape, data });
    }
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(TensorFile { tensors, metadata })
}

/// Serialises tensors to safetensors bytes.
pub fn to_bytes(
    tensors: &[(String, HostTensor)],
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match &t.data {
                HostData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                HostData::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                HostData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                HostData::Unsupported(d) => {
                    return Err(GrokError::tensor(name, format!("cannot write dtype {d}")))
                }
            };
            Ok((name.clone(), dtype, t.shape.clone(), bytes))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                TensorView::new(*d, s.clone(), b)
                    .map_err(|e| GrokError::tensor(n, e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = metadata.into_iter().collect();
    safetensors::serialize(views, Some(meta))
        .map_err(|e| GrokError::tensor("<file>", e.to_string()))
}

/// Writes a safetensors file atomically: a temp file beside it, fsync, then rename.
pub fn write_atomic(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    write_bytes_atomic(path, &to_bytes(tensors, metadata)?)
}

/// Writes bytes atomically: a crash leaves either the old file or the new one, never a partial file.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        // A failed write (a full disk) must not leave its partial temp file holding the space.
        let _ = std::fs::remove_file(&tmp);
        GrokError::file(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming onto a non-empty directory fails after the temp file is written.
        let target = dir.path().join("busy");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), b"x").unwrap();
        let e = write_bytes_atomic(&target, b"data")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot write"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the directory remains: {left:?}");
    }

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let t = vec![
            (
                "a".to_string(),
                HostTensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            ),
            ("b".to_string(), HostTensor::i64(vec![3], vec![5, 6, 7])),
        ];
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        write_atomic(&path, &t, meta).unwrap();
        let f = read(&path).unwrap();
        assert_eq!(f.get("a"), Some(&t[0].1));
        assert_eq!(f.get("b"), Some(&t[1].1));
        assert_eq!(f.metadata["k"], "v");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("truncated"),
            "{e}"
        );
    }
}
