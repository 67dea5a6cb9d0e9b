//! The `Prefer` request header (RFC 7240): the preferences async-op acts on.
//!
//! ```text
//! Prefer: wait=10
//! Prefer: respond-async, callback; url="https://client.example/cb"
//! ```
//!
//! Preference names are case-insensitive; values and parameters may be
//! tokens or quoted strings (a URI with a comma or a semicolon must be
//! quoted). Preferences that are not understood, and malformed ones, are
//! ignored, as section 2 of the RFC asks.

use std::borrow::Cow;

use actix_web::http::header::HeaderMap;

/// The preferences of one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Preferences {
    /// `wait=N`, in seconds.
    pub(crate) wait: Option<u32>,
    /// `respond-async`.
    pub(crate) respond_async: bool,
    /// `callback; url="..."`.
    pub(crate) callback_url: Option<String>,
}

impl Preferences {
    /// Reads every `Prefer` header of a request. The first occurrence of a
    /// preference wins (RFC 7240, section 2).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut preferences = Self::default();
        let mut seen_wait = false;
        let mut seen_callback = false;
        for value in headers.get_all("prefer") {
            let Ok(value) = value.to_str() else { continue };
            for preference in split_outside_quotes(value, ',') {
                let mut parts = split_outside_quotes(preference, ';');
                let Some(head) = parts.next() else { continue };
                let (name, value) = name_value(head);
                if name.eq_ignore_ascii_case("wait") && !seen_wait {
                    seen_wait = true;
                    preferences.wait = value.and_then(|v| v.trim().parse().ok());
                } else if name.eq_ignore_ascii_case("respond-async") {
                    preferences.respond_async = true;
                } else if name.eq_ignore_ascii_case("callback") && !seen_callback {
                    seen_callback = true;
                    preferences.callback_url = parts
                        .map(name_value)
                        .find(|(name, _)| name.eq_ignore_ascii_case("url"))
                        .and_then(|(_, url)| url)
                        .map(Cow::into_owned);
                }
            }
        }
        preferences
    }
}

/// `name[=value]`, with the value unquoted.
fn name_value(text: &str) -> (&str, Option<Cow<'_, str>>) {
    match text.split_once('=') {
        Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
        None => (text.trim(), None),
    }
}

/// Removes the quotes and backslash escapes of a quoted string; a token is
/// returned as it is.
fn unquote(text: &str) -> Cow<'_, str> {
    let Some(inner) = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return Cow::Borrowed(text);
    };
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Splits on `separator` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (at, c) in current.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    rest = Some(&current[at + c.len_utf8()..]);
                    return Some(&current[..at]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
    .filter(|part| !part.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn parse(values: &[&str]) -> Preferences {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                HeaderName::from_static("prefer"),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Preferences::from_headers(&headers)
    }

    #[test]
    fn wait() {
        assert_eq!(parse(&["wait=10"]).wait, Some(10));
        assert_eq!(parse(&["respond-async, WAIT = 3"]).wait, Some(3));
        assert_eq!(parse(&["wait=\"7\""]).wait, Some(7));
        assert_eq!(parse(&["wait=soon"]).wait, None);
        assert_eq!(parse(&["wait=-1"]).wait, None);
        assert_eq!(parse(&["wait=5", "wait=9"]).wait, Some(5));
        assert_eq!(parse(&[]).wait, None);
    }

    #[test]
    fn callback() {
        let p = parse(&[r#"respond-async, callback; url="http://a.example/cb,x;y""#]);
        assert!(p.respond_async);
        assert_eq!(p.callback_url.as_deref(), Some("http://a.example/cb,x;y"));
        let p = parse(&["callback;url=http://b.example/cb", "wait=1"]);
        assert_eq!(p.callback_url.as_deref(), Some("http://b.example/cb"));
        assert_eq!(p.wait, Some(1));
        assert_eq!(parse(&["callback"]).callback_url, None);
        assert_eq!(
            parse(&[r#"callback; url="a\"b""#]).callback_url.as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn malformed_input_is_ignored() {
        for junk in [
            ",,,",
            ";",
            "=",
            "\"",
            "wait=",
            "callback; url",
            "\"unterminated, wait=2",
        ] {
            let _ = parse(&[junk]);
        }
    }
}
