//! `s3://BUCKET[/PREFIX]` and `s3://` (every bucket).

use ferry_core::{Error, Result};

/// What to read: one bucket (optionally below a prefix) or every bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket; `None` means every bucket the credentials can list.
    pub bucket: Option<String>,
    /// Only keys starting with this (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket/prefix`, `s3://bucket` or `s3://`.
    pub fn parse(uri: &str) -> Result<Self> {
        let rest = uri.strip_prefix("s3://").ok_or_else(|| {
            Error::fatal(format!(
                "{uri:?} is not an S3 location: use s3://BUCKET[/PREFIX] or s3://"
            ))
        })?;
        if rest.is_empty() {
            return Ok(S3Location {
                bucket: None,
                prefix: String::new(),
            });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || bucket.len() > 255
            || bucket
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        {
            return Err(Error::fatal(format!(
                "{bucket:?} is not a bucket name (in {uri})"
            )));
        }
        Ok(S3Location {
            bucket: Some(bucket.to_string()),
            prefix: prefix.to_string(),
        })
    }

    /// Back to `s3://…`.
    pub fn uri(&self) -> String {
        match &self.bucket {
            None => "s3://".into(),
            Some(b) if self.prefix.is_empty() => format!("s3://{b}"),
            Some(b) => format!("s3://{b}/{}", self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            S3Location::parse("s3://").unwrap(),
            S3Location {
                bucket: None,
                prefix: "".into()
            }
        );
        assert_eq!(
            S3Location::parse("s3://b").unwrap(),
            S3Location {
                bucket: Some("b".into()),
                prefix: "".into()
            }
        );
        assert_eq!(S3Location::parse("s3://b/2024/").unwrap().prefix, "2024/");
        assert_eq!(S3Location::parse("s3://b/a//b").unwrap().prefix, "a//b");
        assert!(S3Location::parse("s3:///x").is_err());
        assert!(S3Location::parse("http://b").is_err());
        assert_eq!(S3Location::parse("s3://b/p").unwrap().uri(), "s3://b/p");
    }
}
