//! A session's decoded support set as stored: compact bytes (postcard:
//! f32 inputs as 4 bytes each, or the texts; labels as values or class
//! indices), read only to replay.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::infer::input::{Inputs, ValidLabels, ValidSupport};

/// A decoded support set, as stored: inputs and labels, without the class
/// values (they are in the [`Record`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum BlobInputs {
    Values(Vec<f32>),
    Texts(Vec<String>),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum BlobLabels {
    Values(Vec<f32>),
    Classes(Vec<u32>),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SupportBlob {
    pub inputs: BlobInputs,
    pub labels: BlobLabels,
}

impl SupportBlob {
    /// The compact bytes of a decoded support set (postcard: f32 as 4 bytes).
    pub fn encode(s: &ValidSupport) -> Vec<u8> {
        let blob = SupportBlob {
            inputs: match &s.inputs {
                Inputs::Values(v) => BlobInputs::Values(v.clone()),
                Inputs::Texts(t) => BlobInputs::Texts(t.clone()),
            },
            labels: match &s.labels {
                ValidLabels::Values(v) => BlobLabels::Values(v.clone()),
                ValidLabels::Classes { index, .. } => BlobLabels::Classes(index.clone()),
            },
        };
        postcard::to_stdvec(&blob).expect("a support blob always serializes")
    }

    /// The support set back, with the record's classes.
    pub fn decode(bytes: &[u8], classes: Option<&[Value]>) -> Result<ValidSupport, String> {
        let b: SupportBlob = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        let labels = match (b.labels, classes) {
            (BlobLabels::Values(v), None) => ValidLabels::Values(v),
            (BlobLabels::Classes(index), Some(c)) if index.iter().all(|&k| (k as usize) < c.len()) => {
                ValidLabels::Classes {
                    index,
                    classes: c.to_vec(),
                }
            }
            _ => return Err("the stored labels do not match the record's classes".into()),
        };
        let n = match &labels {
            ValidLabels::Values(v) => v.len(),
            ValidLabels::Classes { index, .. } => index.len(),
        };
        let inputs = match b.inputs {
            BlobInputs::Values(v) => Inputs::Values(v),
            BlobInputs::Texts(t) => Inputs::Texts(t),
        };
        Ok(ValidSupport { inputs, n, labels })
    }
}
