//! One error type for the core and for every connector.
//!
//! What matters to the pipeline is not where an error came from but what to do about it:
//! try again ([`ErrorKind::Transient`]), give up on this one item ([`ErrorKind::Permanent`]),
//! or stop the whole run because nothing else can work either ([`ErrorKind::Fatal`], e.g. bad
//! credentials or a source that does not exist).

use std::fmt;
use std::time::Duration;

/// What the pipeline should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying: timeouts, throttling, 5xx, a truncated transfer, a checksum mismatch.
    Transient,
    /// This item cannot be archived (not found, access denied on one file, …); the run goes on.
    Permanent,
    /// Nothing in this run can succeed (wrong credentials, unknown bucket, unreadable root).
    Fatal,
}

/// An error with enough context to be shown to a user as one sentence.
///
/// Messages must never contain secrets: connectors redact credentials before building one.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result with ferry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }
    /// A retryable error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// An error that fails one item only.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }
    /// An error that stops the run.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    /// Classifies an I/O error: interrupted/timed-out operations are transient, a missing or
    /// forbidden file is permanent for that item, a full disk is fatal for the run.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::UnexpectedEof
            | K::BrokenPipe => ErrorKind::Transient,
            K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem => ErrorKind::Fatal,
            _ => ErrorKind::Permanent,
        };
        let hint = match err.kind() {
            K::StorageFull | K::QuotaExceeded => {
                " (free space on the destination and rerun: the export resumes)"
            }
            K::PermissionDenied => " (check the file's permissions)",
            _ => "",
        };
        Error {
            kind,
            message: format!("{context}: {err}{hint}"),
            retry_after: None,
            source: Some(Box::new(err)),
        }
    }
    /// Attaches a server-requested delay (Retry-After) to a transient error.
    pub fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }
    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
    /// Prefixes the message with context ("reading data/x: …").
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
    /// What to do about it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    /// True for [`ErrorKind::Transient`].
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
    /// True for [`ErrorKind::Fatal`].
    pub fn is_fatal(&self) -> bool {
        self.kind == ErrorKind::Fatal
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
