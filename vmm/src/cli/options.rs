//! The one grammar of every device flag's value: `key=value,key,...`
//! (as `--disk path=FILE,readonly`), with errors that quote the flag.

use std::str::FromStr;

/// A device flag's value that does not follow its grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A key the flag does not know (or a switch given a value).
    #[error("{flag} {value}: unknown option '{option}' ({hint})")]
    Unknown {
        /// The flag (`--disk`).
        flag: &'static str,
        /// Its whole value.
        value: String,
        /// The option not understood.
        option: String,
        /// The flag's grammar.
        hint: &'static str,
    },
    /// A key that must be given (with a non-empty value) is not.
    #[error("{flag} {value}: no {key} ({hint})")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// Its whole value.
        value: String,
        /// The missing key.
        key: &'static str,
        /// The flag's grammar.
        hint: &'static str,
    },
    /// A number that does not parse.
    #[error("{flag} {value}: {key} '{text}' is not a whole number ({hint})")]
    Number {
        /// The flag.
        flag: &'static str,
        /// Its whole value.
        value: String,
        /// The key.
        key: &'static str,
        /// The key's value.
        text: String,
        /// The flag's grammar.
        hint: &'static str,
    },
    /// A value outside the key's choices.
    #[error("{flag} {value}: unknown {key} '{text}' ({hint})")]
    Choice {
        /// The flag.
        flag: &'static str,
        /// Its whole value.
        value: String,
        /// The key.
        key: &'static str,
        /// The key's value.
        text: String,
        /// The flag's grammar.
        hint: &'static str,
    },
}

/// One flag's options, taken out one key at a time; whatever is left is
/// unknown.
#[derive(Debug)]
pub struct Options<'a> {
    flag: &'static str,
    hint: &'static str,
    value: &'a str,
    left: Vec<&'a str>,
}

impl<'a> Options<'a> {
    /// Splits `value` of `flag`, whose grammar is `hint`, at its commas.
    pub fn new(flag: &'static str, hint: &'static str, value: &'a str) -> Self {
        Self {
            flag,
            hint,
            value,
            left: value.split(',').collect(),
        }
    }

    /// The value of `key=...` (the last one if given twice).
    pub fn value(&mut self, key: &str) -> Option<&'a str> {
        let mut found = None;
        self.left.retain(|option| match option.split_once('=') {
            Some((k, v)) if k == key => {
                found = Some(v);
                false
            }
            _ => true,
        });
        found
    }

    /// Whether the bare switch `key` is given.
    pub fn switch(&mut self, key: &str) -> bool {
        let before = self.left.len();
        self.left.retain(|option| *option != key);
        self.left.len() != before
    }

    /// An error for the first option no key took.
    pub fn check_unknown(&self) -> Result<(), OptionError> {
        match self.left.first() {
            None => Ok(()),
            Some(option) => Err(OptionError::Unknown {
                flag: self.flag,
                value: self.value.to_owned(),
                option: (*option).to_owned(),
                hint: self.hint,
            }),
        }
    }

    /// `found`, the value of `key`, which must be given and not empty.
    pub fn required(
        &self,
        key: &'static str,
        found: Option<&'a str>,
    ) -> Result<&'a str, OptionError> {
        found
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.missing(key))
    }

    /// The error for `key`, which must be given, missing.
    pub fn missing(&self, key: &'static str) -> OptionError {
        OptionError::Missing {
            flag: self.flag,
            value: self.value.to_owned(),
            key,
            hint: self.hint,
        }
    }

    /// `found`, the value of `key`, as a number.
    pub fn number<T: FromStr>(
        &self,
        key: &'static str,
        found: Option<&str>,
    ) -> Result<Option<T>, OptionError> {
        found
            .map(|text| {
                text.parse().map_err(|_| OptionError::Number {
                    flag: self.flag,
                    value: self.value.to_owned(),
                    key,
                    text: text.to_owned(),
                    hint: self.hint,
                })
            })
            .transpose()
    }

    /// `found`, the value of `key`, as one of `choices` (by name).
    pub fn choice<T: Copy>(
        &self,
        key: &'static str,
        found: Option<&str>,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, OptionError> {
        found
            .map(|text| {
                choices
                    .iter()
                    .find(|(name, _)| *name == text)
                    .map(|(_, choice)| *choice)
                    .ok_or_else(|| OptionError::Choice {
                        flag: self.flag,
                        value: self.value.to_owned(),
                        key,
                        text: text.to_owned(),
                        hint: self.hint,
                    })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_switches_and_leftovers() {
        let mut options = Options::new("--x", "a=N[,b]", "a=1,b,a=2,c=3");
        assert_eq!(options.value("a"), Some("2"), "the last one wins");
        assert!(options.switch("b"));
        assert!(!options.switch("b"));
        let err = options.check_unknown().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--x a=1,b,a=2,c=3: unknown option 'c=3' (a=N[,b])"
        );
        assert_eq!(options.value("c"), Some("3"));
        assert!(options.check_unknown().is_ok());
    }

    #[test]
    fn required_numbers_and_choices_name_the_key() {
        let options = Options::new("--x", "h", "v");
        assert!(options
            .required("p", Some(""))
            .unwrap_err()
            .to_string()
            .contains("no p"));
        assert_eq!(options.required("p", Some("/f")), Ok("/f"));
        assert_eq!(options.number::<u8>("n", Some("7")), Ok(Some(7)));
        assert!(options
            .number::<u8>("n", Some("many"))
            .unwrap_err()
            .to_string()
            .contains("n 'many' is not a whole number"));
        assert_eq!(
            options.choice("c", Some("b"), &[("a", 1), ("b", 2)]),
            Ok(Some(2))
        );
        assert!(options
            .choice("c", Some("z"), &[("a", 1)])
            .unwrap_err()
            .to_string()
            .contains("unknown c 'z'"));
        assert_eq!(options.choice::<u8>("c", None, &[]), Ok(None));
    }
}
