//! The `array $options` argument: checked against the keys a function knows, with PHP 8's
//! `TypeError` / `ValueError` for anything wrong.

use std::time::Duration;

use ext_php_rs::{
    convert::{FromZval, StubLiteral},
    exception::PhpException,
    flags::DataType,
    types::{ArrayKey, ZendHashTable, Zval},
};

use super::exceptions::{type_error, value_error};

/// The `array $options = []` parameter as the macros see it: an array, `[]` when omitted.
#[derive(Default)]
pub struct OptionsArg<'a>(Option<&'a ZendHashTable>);

impl<'a> FromZval<'a> for OptionsArg<'a> {
    const TYPE: DataType = DataType::Array;

    fn from_zval(zval: &'a Zval) -> Option<Self> {
        zval.array().map(|table| OptionsArg(Some(table)))
    }
}

impl StubLiteral for OptionsArg<'_> {
    fn stub_literal(&self) -> String {
        "[]".into()
    }
}

pub struct Options<'a> {
    function: &'static str,
    argument: &'static str,
    entries: Vec<(String, &'a Zval)>,
}

impl<'a> Options<'a> {
    /// Refuses keys not in `known`.
    /// `argument` names the parameter for messages, as PHP does: `#2 ($options)`.
    pub fn parse(
        function: &'static str,
        argument: &'static str,
        arg: OptionsArg<'a>,
        known: &[&str],
    ) -> Result<Self, PhpException> {
        let mut entries = Vec::new();
        for (key, value) in arg.0.into_iter().flatten() {
            let name = match key {
                ArrayKey::Long(n) => n.to_string(),
                other => other.to_string(),
            };
            if !known.contains(&name.as_str()) {
                return Err(value_error(format!(
                    "{function}(): Argument {argument} has an unknown option \"{}\"; known options are: {}",
                    name.escape_debug(),
                    known.join(", ")
                )));
            }
            entries.push((name, value));
        }
        Ok(Options { function, argument, entries })
    }

    /// The value of `name`, unless absent or null.
    fn get(&self, name: &str) -> Option<&'a Zval> {
        self.entries.iter().find(|(key, _)| key == name).map(|(_, v)| *v).filter(|v| !v.is_null())
    }

    fn type_error(&self, name: &str, expected: &str, got: &Zval) -> PhpException {
        type_error(format!(
            "{}(): Argument {} option \"{name}\" must be {expected}, {} given",
            self.function,
            self.argument,
            type_name(got)
        ))
    }

    pub fn value_error(&self, name: &str, problem: &str) -> PhpException {
        value_error(format!(
            "{}(): Argument {} option \"{name}\" {problem}",
            self.function, self.argument
        ))
    }

    /// A non-empty string without NUL bytes, as raw bytes.
    pub fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, PhpException> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let bytes = value
            .zend_str()
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| self.type_error(name, "of type string", value))?;
        if bytes.is_empty() {
            return Err(self.value_error(name, "must not be empty"));
        }
        if bytes.contains(&0) {
            return Err(self.value_error(name, "must not contain NUL bytes"));
        }
        Ok(Some(bytes))
    }

    /// A string, possibly empty, as UTF-8 text without NUL bytes.
    pub fn string(&self, name: &str) -> Result<Option<String>, PhpException> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let text = value.zend_str().ok_or_else(|| self.type_error(name, "of type string", value))?;
        let text = std::str::from_utf8(text.as_bytes()).map_err(|_| self.value_error(name, "must be valid UTF-8"))?;
        if text.contains('\0') {
            return Err(self.value_error(name, "must not contain NUL bytes"));
        }
        Ok(Some(text.to_owned()))
    }

    /// An int or float, finite and not negative.
    pub fn number(&self, name: &str) -> Result<Option<f64>, PhpException> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let number = match (value.long(), value.double()) {
            (Some(n), _) => n as f64,
            (None, Some(x)) => x,
            _ => return Err(self.type_error(name, "of type int|float|null", value)),
        };
        if !number.is_finite() || number < 0.0 {
            return Err(self.value_error(name, "must be a finite number greater than or equal to 0, or null"));
        }
        Ok(Some(number))
    }

    /// Seconds, as `number` reads them.
    pub fn seconds(&self, name: &str) -> Result<Option<Duration>, PhpException> {
        let Some(seconds) = self.number(name)? else { return Ok(None) };
        Duration::try_from_secs_f64(seconds)
            .map(Some)
            .map_err(|_| self.value_error(name, "is too large"))
    }

    /// An int.
    pub fn int(&self, name: &str) -> Result<Option<i64>, PhpException> {
        let Some(value) = self.get(name) else { return Ok(None) };
        value.long().map(Some).ok_or_else(|| self.type_error(name, "of type int|null", value))
    }
}

/// PHP's name for a value's type, as in its own `TypeError` messages.
fn type_name(value: &Zval) -> String {
    if value.is_string() {
        "string".into()
    } else if value.is_long() {
        "int".into()
    } else if value.is_double() {
        "float".into()
    } else if value.is_bool() {
        "bool".into()
    } else if value.is_array() {
        "array".into()
    } else if let Some(object) = value.object() {
        object.get_class_name().unwrap_or_else(|_| "object".into())
    } else {
        "null".into()
    }
}
