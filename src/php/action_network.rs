//! `joinblock_person_has_tag`: argument checks and exception mapping over
//! `crate::action_network`.

// The parameter `apiKey` is spelled as PHP callers name it in named arguments; the generated
// glue code repeats the name, so the allowance has to cover the module.
#![allow(non_snake_case)]

use ext_php_rs::{convert::FromZval, flags::DataType, prelude::*, types::Zval};

use super::{
    exceptions::{guarded, value_error, ACTION_NETWORK_EXCEPTION},
    in_effect::{shared_dir, site_db},
    options::{Options, OptionsArg},
};
use crate::{
    action_network::{self, parse_base_url, Settings, DEFAULT_BASE_URL},
    config,
};

const FUNCTION: &str = "joinblock_person_has_tag";

/// A `string` argument's bytes, whatever their encoding, so that the function itself judges them.
pub struct Bytes<'a>(&'a [u8]);

impl<'a> FromZval<'a> for Bytes<'a> {
    const TYPE: DataType = DataType::String;

    fn from_zval(zval: &'a Zval) -> Option<Self> {
        zval.zend_str().map(|s| Bytes(s.as_bytes()))
    }
}

/// Whether the Action Network person with this email has tag `$tag`; null when there is no
/// such person.
#[php_function]
#[php(defaults(options = OptionsArg::default()))]
pub fn joinblock_person_has_tag(email: &str, tag: &str, apiKey: Bytes, options: OptionsArg) -> PhpResult<Option<bool>> {
    guarded(&ACTION_NETWORK_EXCEPTION, || person_has_tag(email, tag, apiKey.0, options))
}

fn person_has_tag(email: &str, tag: &str, api_key: &[u8], options: OptionsArg) -> PhpResult<Option<bool>> {
    require_text(1, "email", email)?;
    require_text(2, "tag", tag)?;
    // The key becomes an HTTP header: CR or LF in it would add headers of the caller's making.
    // One rule for both ways a key can be unfit, as the polyfill words it.
    let unfit = || value_error(format!("{FUNCTION}(): Argument #3 ($apiKey) must be valid UTF-8 without control characters"));
    let api_key = std::str::from_utf8(api_key).map_err(|_| unfit())?;
    require_text(3, "apiKey", api_key)?;
    if api_key.chars().any(char::is_control) {
        return Err(unfit());
    }
    let settings = settings(Options::parse(
        FUNCTION,
        "#4 ($options)",
        options,
        &["base_url", "timeout", "deadline", "max_pages", "tag_cache_ttl", "max_rps"],
    )?)?;
    action_network::person_has_tag(email, tag, api_key, &settings)
        .map_err(|e| ACTION_NETWORK_EXCEPTION.with(redact(&e.to_string(), api_key)))
}

fn require_text(position: u8, name: &str, value: &str) -> PhpResult<()> {
    if value.trim().is_empty() {
        return Err(value_error(format!("{FUNCTION}(): Argument #{position} (${name}) must not be empty")));
    }
    Ok(())
}

fn settings(options: Options) -> PhpResult<Settings> {
    let (base_url, source) = match options.bytes("base_url")? {
        Some(url) => (url, "option \"base_url\""),
        None => (
            config::ini_bytes(config::ACTION_NETWORK_URL).unwrap_or_else(|| DEFAULT_BASE_URL.into()),
            "INI joinblock.action_network_url",
        ),
    };
    let base_url = std::str::from_utf8(&base_url)
        .map_err(|_| "is not valid UTF-8".to_string())
        .and_then(parse_base_url)
        .map_err(|problem| value_error(format!("{FUNCTION}(): {source} {problem}")))?;
    let mut settings = Settings::new(base_url);
    let positive = |name: &str, value: Option<std::time::Duration>| -> PhpResult<Option<std::time::Duration>> {
        match value {
            Some(d) if d.is_zero() => Err(options.value_error(name, "must be greater than 0")),
            other => Ok(other),
        }
    };
    if let Some(timeout) = positive("timeout", options.seconds("timeout")?)? {
        settings.timeout = timeout;
    }
    if let Some(deadline) = positive("deadline", options.seconds("deadline")?)? {
        settings.deadline = deadline;
    }
    if let Some(ttl) = options.seconds("tag_cache_ttl")? {
        settings.tag_cache_ttl = ttl;
    }
    if let Some(max_pages) = options.int("max_pages")? {
        settings.max_pages = u32::try_from(max_pages)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| options.value_error("max_pages", "must be between 1 and 4294967295"))?;
    }
    if let Some(max_rps) = options.number("max_rps")? {
        if max_rps == 0.0 {
            return Err(options.value_error("max_rps", "must be greater than 0"));
        }
        settings.max_rps = max_rps;
    }
    settings.shared_dir = shared_dir();
    settings.site_db = site_db().map_err(|problem| value_error(format!("{FUNCTION}(): {problem}")))?;
    Ok(settings)
}

/// Belt and braces: Action Network never echoes the key, but a message must never carry it.
fn redact(message: &str, api_key: &str) -> String {
    if api_key.len() >= 4 {
        message.replace(api_key, "[API key]")
    } else {
        message.to_owned()
    }
}

/// Adds the tag check to the module.
pub fn register(module: ModuleBuilder) -> ModuleBuilder {
    module.function(wrap_function!(joinblock_person_has_tag))
}

