//! Reading and writing safetensors files, with atomic writes and errors that name the file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{GrokError, Result};

/// The element types groklens reads and writes. Files may hold narrower types: half-precision floats
/// are widened to f32 and narrower integers to i64 on reading, keeping the stored dtype's name for
/// messages.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    /// 32-bit floats (parameters, activations), also f16/bf16 widened.
    F32(Vec<f32>),
    /// 64-bit floats (losses).
    F64(Vec<f64>),
    /// 64-bit integers (tokens, labels, split indices), also narrower integers widened.
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
    /// The dtype a file stored when it was narrower than `data`'s (`I32`, `U8`, `F16`, ...), for messages.
    pub stored: Option<String>,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self::new(shape, HostData::F32(data))
    }

    /// An i64 tensor.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self::new(shape, HostData::I64(data))
    }

    /// An f64 tensor.
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Self {
        Self::new(shape, HostData::F64(data))
    }

    fn new(shape: Vec<usize>, data: HostData) -> Self {
        HostTensor {
            shape,
            data,
            stored: None,
        }
    }

    /// The dtype's name as safetensors writes it (the stored one for tensors read from a file).
    pub fn dtype(&self) -> &str {
        match (&self.stored, &self.data) {
            (Some(d), _) | (None, HostData::Unsupported(d)) => d,
            (None, HostData::F32(_)) => "F32",
            (None, HostData::F64(_)) => "F64",
            (None, HostData::I64(_)) => "I64",
        }
    }

    /// The values as f32 (f64 is narrowed); an integer tensor is an error naming `name`.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        match &self.data {
            HostData::F32(v) => Ok(v.clone()),
            HostData::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            _ => Err(self.wrong_dtype(name, "a float tensor (F32, F64, F16 or BF16)")),
        }
    }

    /// The values as i64 (any integer dtype); a float tensor is an error naming `name`.
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        match &self.data {
            HostData::I64(v) => Ok(v.clone()),
            _ => Err(self.wrong_dtype(name, "an integer tensor (I64, I32, U8, ...)")),
        }
    }

    /// The values as f64.
    pub fn to_f64(&self, name: &str) -> Result<Vec<f64>> {
        match &self.data {
            HostData::F64(v) => Ok(v.clone()),
            HostData::F32(v) => Ok(v.iter().map(|&x| x as f64).collect()),
            _ => Err(self.wrong_dtype(name, "a float tensor (F32, F64, F16 or BF16)")),
        }
    }

    fn wrong_dtype(&self, name: &str, expected: &str) -> GrokError {
        GrokError::tensor(
            name,
            format!("has dtype {}; {expected} was expected", self.dtype()),
        )
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

/// The file name an atomic write's temp file `name` stands for (`NAME.PID.tmp`, or an older
/// groklens's `NAME.tmp`); `None` for any other name.
pub fn temp_file_target(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".tmp")?;
    match stem.rsplit_once('.') {
        Some((target, pid)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            Some(target)
        }
        _ => Some(stem),
    }
}

/// Only the `__metadata__` map of a safetensors file, read from its header (the tensors are not read).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let corrupt = |e: String| {
        GrokError::file(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    };
    let mut f = std::fs::File::open(path)
        .map_err(|e| GrokError::file(path, format!("cannot read: {e}")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| corrupt(format!("no header: {e}")))?;
    let len = u64::from_le_bytes(len);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > 100_000_000 || len + 8 > size {
        return Err(corrupt(format!(
            "header length {len} does not fit the file"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| corrupt(format!("short header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header: {e}")))?;
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
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
        let data = decode(view.dtype(), view.data());
        let mut t = HostTensor::new(shape, data);
        let dtype = format!("{:?}", view.dtype());
        if t.dtype() != dtype {
            t.stored = Some(dtype);
        }
        tensors.insert(name, t);
    }
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(TensorFile { tensors, metadata })
}

/// The values of raw little-endian `bytes` of `dtype`, widened to the type groklens computes in.
fn decode(dtype: Dtype, bytes: &[u8]) -> HostData {
    fn each<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks of N")))
            .collect()
    }
    match dtype {
        Dtype::F32 => HostData::F32(each(bytes, f32::from_le_bytes)),
        Dtype::F16 => HostData::F32(each(bytes, |b| half::f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => HostData::F32(each(bytes, |b| half::bf16::from_le_bytes(b).to_f32())),
        Dtype::F64 => HostData::F64(each(bytes, f64::from_le_bytes)),
        Dtype::I64 => HostData::I64(each(bytes, i64::from_le_bytes)),
        Dtype::I32 => HostData::I64(each(bytes, |b| i32::from_le_bytes(b) as i64)),
        Dtype::I16 => HostData::I64(each(bytes, |b| i16::from_le_bytes(b) as i64)),
        Dtype::I8 => HostData::I64(each(bytes, |b: [u8; 1]| b[0] as i8 as i64)),
        Dtype::U8 => HostData::I64(each(bytes, |b: [u8; 1]| b[0] as i64)),
        Dtype::U16 => HostData::I64(each(bytes, |b| u16::from_le_bytes(b) as i64)),
        Dtype::U32 => HostData::I64(each(bytes, |b| u32::from_le_bytes(b) as i64)),
        other => HostData::Unsupported(format!("{other:?}")),
    }
}

/// Serialises tensors to safetensors bytes, in the order given, with the metadata sorted by key: the
/// same tensors and metadata always give the same bytes (the `safetensors` crate writes metadata in
/// hash order).
pub fn to_bytes(
    tensors: &[(String, HostTensor)],
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut data = Vec::new();
    for (name, t) in tensors {
        let start = data.len();
        let (dtype, elements) = match &t.data {
            HostData::F32(v) => {
                v.iter().for_each(|x| data.extend(x.to_le_bytes()));
                ("F32", v.len())
            }
            HostData::F64(v) => {
                v.iter().for_each(|x| data.extend(x.to_le_bytes()));
                ("F64", v.len())
            }
            HostData::I64(v) => {
                v.iter().for_each(|x| data.extend(x.to_le_bytes()));
                ("I64", v.len())
            }
            HostData::Unsupported(d) => {
                return Err(GrokError::tensor(name, format!("cannot write dtype {d}")))
            }
        };
        if elements != t.shape.iter().product::<usize>() {
            return Err(GrokError::tensor(
                name,
                format!(
                    "holds {elements} values, not the {} its shape {:?} needs",
                    t.shape.iter().product::<usize>(),
                    t.shape
                ),
            ));
        }
        let info = serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]});
        if header.insert(name.clone(), info).is_some() || name == "__metadata__" {
            return Err(GrokError::tensor(
                name,
                "is named twice (or reserved); names must be unique",
            ));
        }
    }
    let mut json = serde_json::to_vec(&header).expect("header serialises");
    // The data starts 8-byte aligned, as the format's reference writer pads it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend((json.len() as u64).to_le_bytes());
    out.extend(json);
    out.extend(data);
    Ok(out)
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
/// The temp file beside it is `NAME.PID.tmp` ([`temp_file_target`] reads it back), so two processes
/// writing the same file never share one.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
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
    fn narrow_dtypes_are_widened_and_misuse_names_the_stored_dtype() {
        use safetensors::tensor::TensorView;
        let halves: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let ints: Vec<u8> = [7i32, -3].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bytes = safetensors::serialize(
            [
                ("h", TensorView::new(Dtype::F16, vec![2], &halves).unwrap()),
                ("i", TensorView::new(Dtype::I32, vec![2], &ints).unwrap()),
                (
                    "u",
                    TensorView::new(Dtype::U8, vec![2], &[4u8, 250]).unwrap(),
                ),
            ],
            None,
        )
        .unwrap();
        let f = parse(&bytes, Path::new("x.safetensors")).unwrap();
        assert_eq!(f.tensors["h"].to_f32("h").unwrap(), [1.5, -2.25]);
        assert_eq!(f.tensors["i"].to_i64("i").unwrap(), [7, -3]);
        assert_eq!(f.tensors["u"].to_i64("u").unwrap(), [4, 250]);
        let e = f.tensors["u"].to_f32("u").unwrap_err().to_string();
        assert!(e.contains("dtype U8") && e.contains("float tensor"), "{e}");
        let e = f.tensors["i"].to_f32("i").unwrap_err().to_string();
        assert!(e.contains("dtype I32"), "{e}");
        let e = f.tensors["h"].to_i64("h").unwrap_err().to_string();
        assert!(
            e.contains("dtype F16") && e.contains("integer tensor"),
            "{e}"
        );
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
        // Same tensors and metadata, same bytes (however many metadata keys).
        let meta: BTreeMap<String, String> =
            (0..20).map(|i| (format!("k{i}"), i.to_string())).collect();
        let once = to_bytes(&t, meta.clone()).unwrap();
        for _ in 0..5 {
            assert_eq!(to_bytes(&t, meta.clone()).unwrap(), once);
        }
        assert_eq!(parse(&once, &path).unwrap().metadata.len(), 20);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("truncated"),
            "{e}"
        );
    }
}
