//! Parsing the attribute's arguments.

use proc_macro2::Span;
use syn::{
    Ident, LitInt, LitStr, Token,
    parse::{Parse, ParseStream},
};

/// The longest retention accepted (30 days), as in the library.
const MAX_RETENTION: u64 = 30 * 24 * 3600;

const USAGE: &str =
    r#"expected #[async_operation(post, "/path", retry_after = 2, retention = "1h")]"#;

/// The HTTP methods a begin endpoint may use.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BeginMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl BeginMethod {
    fn parse(ident: &Ident) -> syn::Result<Self> {
        match ident.to_string().as_str() {
            "get" => Ok(Self::Get),
            "post" => Ok(Self::Post),
            "put" => Ok(Self::Put),
            "patch" => Ok(Self::Patch),
            "delete" => Ok(Self::Delete),
            other => Err(syn::Error::new(
                ident.span(),
                format!(
                    "unknown HTTP method `{other}`: expected one of `get`, `post`, `put`, `patch`, `delete`"
                ),
            )),
        }
    }

    pub(crate) fn constant(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// The parsed arguments.
pub(crate) struct OperationArgs {
    pub(crate) method: BeginMethod,
    pub(crate) path: LitStr,
    pub(crate) retry_after: Option<u32>,
    pub(crate) retention: Option<u32>,
    pub(crate) name: Option<LitStr>,
    pub(crate) long_poll: Option<u32>,
    pub(crate) early_poll: Option<EarlyPoll>,
}

/// The early-poll policy, as the library names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EarlyPoll {
    Reject,
    Hold,
}

/// `"90s"`, `"15m"`, `"1h"`, `"7d"` or `"90"` in seconds.
fn duration_secs(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

impl Parse for OperationArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                format!("missing the begin path: {USAGE}"),
            ));
        }
        let mut method = BeginMethod::Post;
        if input.peek(Ident) {
            let ident: Ident = input.parse()?;
            if input.peek(Token![=]) {
                // `#[async_operation(retry_after = 2)]`: an argument, not a method.
                return Err(syn::Error::new(
                    ident.span(),
                    format!("missing the begin path before `{ident}`: {USAGE}"),
                ));
            }
            method = BeginMethod::parse(&ident)?;
            if input.is_empty() {
                return Err(syn::Error::new(
                    ident.span(),
                    format!("missing the begin path after `{ident}`: {USAGE}"),
                ));
            }
            input.parse::<Token![,]>()?;
        }
        let path: LitStr = input.parse().map_err(|error| {
            syn::Error::new(
                error.span(),
                format!("expected the begin path as a string literal: {USAGE}"),
            )
        })?;
        if !path.value().starts_with('/') {
            return Err(syn::Error::new(
                path.span(),
                format!(
                    "the begin path must start with `/`, as in {:?}",
                    format!("/{}", path.value())
                ),
            ));
        }
        let mut args = Self {
            method,
            path,
            retry_after: None,
            retention: None,
            name: None,
            long_poll: None,
            early_poll: None,
        };
        let mut retry_after_span = None;
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let duplicate = || syn::Error::new(key.span(), format!("`{key}` is given twice"));
            match key.to_string().as_str() {
                "retry_after" => {
                    if args.retry_after.is_some() {
                        return Err(duplicate());
                    }
                    let value: LitInt = input.parse().map_err(|error| {
                        syn::Error::new(error.span(), "`retry_after` expects whole seconds as an integer, e.g. `retry_after = 2`")
                    })?;
                    let seconds = value.base10_parse::<u32>().ok().filter(|s| *s <= 3600);
                    let Some(seconds) = seconds else {
                        return Err(syn::Error::new(
                            value.span(),
                            "`retry_after` must be between 0 and 3600 seconds",
                        ));
                    };
                    args.retry_after = Some(seconds);
                    retry_after_span = Some(value.span());
                }
                "retention" => {
                    if args.retention.is_some() {
                        return Err(duplicate());
                    }
                    if input.peek(LitInt) {
                        // `retention = 60`: suggest the string that means it.
                        let value: LitInt = input.parse()?;
                        return Err(syn::Error::new(
                            value.span(),
                            format!(
                                r#"`retention` expects a duration string: `retention = "{}s"` for seconds, or "15m", "1h", "7d""#,
                                value.base10_digits()
                            ),
                        ));
                    }
                    let value: LitStr = input.parse().map_err(|error| {
                        syn::Error::new(error.span(), r#"`retention` expects a duration string, e.g. `retention = "1h"` ("90s", "15m", "1h", "7d")"#)
                    })?;
                    let Some(seconds) = duration_secs(&value.value()) else {
                        return Err(syn::Error::new(
                            value.span(),
                            format!(
                                r#"`retention = {:?}` is not a duration: expected a whole number followed by `s`, `m`, `h` or `d`, such as "90s", "15m", "1h" or "7d""#,
                                value.value()
                            ),
                        ));
                    };
                    let seconds = Some(seconds).filter(|s| (1..=MAX_RETENTION).contains(s));
                    let Some(seconds) = seconds.and_then(|s| u32::try_from(s).ok()) else {
                        return Err(syn::Error::new(
                            value.span(),
                            r#"`retention` must be from 1 second to 30 days ("30d")"#,
                        ));
                    };
                    args.retention = Some(seconds);
                }
                "name" => {
                    if args.name.is_some() {
                        return Err(duplicate());
                    }
                    args.name = Some(input.parse().map_err(|error| {
                        syn::Error::new(
                            error.span(),
                            r#"`name` expects a string, e.g. `name = "create_report"`"#,
                        )
                    })?);
                }
                "long_poll" => {
                    if args.long_poll.is_some() {
                        return Err(duplicate());
                    }
                    let value: LitInt = input.parse().map_err(|error| {
                        syn::Error::new(
                            error.span(),
                            "`long_poll` expects whole seconds as an integer, e.g. `long_poll = 20` (0 turns it off)",
                        )
                    })?;
                    let seconds = value.base10_parse::<u32>().ok().filter(|s| *s <= 30);
                    let Some(seconds) = seconds else {
                        return Err(syn::Error::new(
                            value.span(),
                            "`long_poll` must be between 0 and 30 seconds: a request is never held longer",
                        ));
                    };
                    args.long_poll = Some(seconds);
                }
                "early_poll" => {
                    if args.early_poll.is_some() {
                        return Err(duplicate());
                    }
                    let value: LitStr = input.parse().map_err(|error| {
                        syn::Error::new(
                            error.span(),
                            r#"`early_poll` expects a string: `early_poll = "reject"` or `early_poll = "hold"`"#,
                        )
                    })?;
                    args.early_poll = Some(match value.value().as_str() {
                        "reject" => EarlyPoll::Reject,
                        "hold" => EarlyPoll::Hold,
                        _ => {
                            return Err(syn::Error::new(
                                value.span(),
                                r#"`early_poll` must be "reject" or "hold""#,
                            ));
                        }
                    });
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown argument `{other}`: expected `retry_after`, `retention`, `long_poll`, `early_poll` or `name`"
                        ),
                    ));
                }
            }
        }
        if let (Some(retry_after), Some(retention), Some(span)) =
            (args.retry_after, args.retention, retry_after_span)
        {
            if retry_after >= retention {
                return Err(syn::Error::new(
                    span,
                    "`retry_after` must be shorter than `retention`",
                ));
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::duration_secs;

    #[test]
    fn durations() {
        assert_eq!(duration_secs("90"), Some(90));
        assert_eq!(duration_secs("90s"), Some(90));
        assert_eq!(duration_secs("15m"), Some(900));
        assert_eq!(duration_secs("1h"), Some(3600));
        assert_eq!(duration_secs("7d"), Some(604_800));
        assert_eq!(duration_secs("1w"), None);
        assert_eq!(duration_secs("m"), None);
    }
}
