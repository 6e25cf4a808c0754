//! Phone numbers read from request bodies (SPEC §1 steps 6–7): normalised to
//! E.164 so that formatting cannot evade a per-number rate limit, checked
//! against denied prefixes (premium-rate ranges, whole countries), and hashed
//! with a key before they enter a rate-limit descriptor, a log or a metric.
//!
//! # Normalisation rules
//!
//! [`normalize`] turns what a client typed into one canonical string,
//! `+` followed by the digits of the number, so that every spelling of one
//! number counts against the same limit:
//!
//! 1. **Size first.** Inputs longer than [`MAX_INPUT_BYTES`] (64) bytes are
//!    refused before any other work.
//! 2. **Characters.** Only ASCII digits `0`–`9`, the separators space, `-`,
//!    `.`, `(`, `)` and `/`, and one `+` are accepted. Separators are ignored
//!    wherever they appear (parentheses are not checked for balance).
//!    Anything else is refused: letters (so no `ext. 12` or vanity numbers),
//!    tabs, newlines and other control characters, and every non-ASCII
//!    character. That includes digits of other scripts, such as Arabic-Indic
//!    `٤٤` or full-width `４４`, and the full-width plus `＋`: they would be
//!    another spelling of the same number, and refusing them is the safe
//!    default (a genuine app sends ASCII digits).
//! 3. **The `+`.** A `+` may appear once, before the first digit (separators
//!    may come before it, as in `(+44) 20 …`). A second `+`, or a `+` after a
//!    digit, is refused.
//! 4. **International numbers.** A leading `+`, or leading digits `00` (the
//!    ITU international call prefix, which is dropped), make the number
//!    international: the digits that follow are country calling code and
//!    national number. Other international call prefixes, such as North
//!    America's `011`, are not recognised: such input is read as a national
//!    number.
//! 5. **The `(0)` convention.** In an international number, a group `(0)`
//!    right after the calling code (as in `+44 (0)20 7946 0000`) marks the
//!    national trunk prefix that callers from abroad leave out, so it is
//!    dropped; except where that `0` is part of the number (Italy `+39 (0)6`
//!    is `+39 06`, see `ZERO_IS_SIGNIFICANT`). Anywhere else, `(0)` is the
//!    digit `0` in parentheses. A `0`
//!    written without parentheses is kept: `+44 020 …` and `+44 20 …` are
//!    different strings (the filter carries no numbering plan to know that
//!    one of them is invalid). Gateways deliver both to one phone, though,
//!    so denied prefixes and the per-number rate-limit key also read the
//!    number without that `0` ([`E164::without_trunk_prefix`], which also
//!    knows the trunk prefixes that are not `0`: `+1 1 900 …`,
//!    `+36 06 90 …`, `+7 8 809 …`). A trunk prefix written twice
//!    (`+44 00 909 …`) makes no number ([`E164::trunk_written_twice`]),
//!    and the filter refuses it.
//! 6. **National numbers.** Anything else is a national number. It needs
//!    [`PhoneRules::default_calling_code`] (otherwise [`PhoneError::NoCountry`]);
//!    the national (trunk) prefix (by default the calling code's own, see
//!    [`default_national_prefix`]: `0` for most) is stripped once if the
//!    number starts with it, and the calling code is put in front.
//! 7. **The result** is `+` followed by [`MIN_DIGITS`] (7) to [`MAX_DIGITS`]
//!    (15, the E.164 maximum) digits, the first of which is not `0` (no
//!    country calling code starts with 0).
//! 8. **Fixed plans.** `+1` and `+7` numbers have ten digits after the
//!    calling code (a trunk prefix written after it aside), and a `+1`
//!    area code and exchange start with 2–9: other international call
//!    prefixes (`011`, `001`, `0011`, `8 10`) read as part of a number
//!    make numbers of these zones that no one has, and are refused.
//!
//! For a UK default (`default_calling_code: "44"`, national prefix `0`), all of
//! `+44 7700 900123`, `+44 (0)7700-900123`, `0044 7700 900123`,
//! `(+44) 7700.900.123`, `07700 900123` and `7700900123` give `+447700900123`.
//!
//! # Hashing
//!
//! [`hash`] is HMAC-SHA256 (RFC 2104) keyed with the configured secret over the
//! ASCII bytes of the E.164 string (with its `+`), rendered as lower-case hex
//! of the first 16 bytes (128 bits): plenty to keep distinct numbers apart in
//! a rate-limit key, and short in descriptors and logs. An unkeyed hash would
//! not protect the numbers: the space of phone numbers is small enough to
//! hash every one of them.

use std::fmt;

/// Inputs longer than this many bytes are refused before any parsing: the
/// longest sensible formatted number (15 digits, `+`, separators) fits easily.
pub const MAX_INPUT_BYTES: usize = 64;

/// The fewest digits (calling code included) of a normalised number. Seven
/// admits the shortest real numbers (Niue `+683` and Tokelau `+690` have
/// four-digit national numbers) while refusing fragments such as `+1234`.
pub const MIN_DIGITS: usize = 7;

/// The most digits (calling code included) of a normalised number: the E.164
/// maximum (ITU-T E.164 §6).
pub const MAX_DIGITS: usize = 15;

/// The shortest key [`hash`] should be given. Configuration should refuse
/// shorter secrets: a guessable key makes the hash as reversible as none.
pub const MIN_KEY_BYTES: usize = 16;

/// Bytes of the HMAC output kept by [`hash`] (rendered as twice as many hex
/// characters).
pub const HASH_BYTES: usize = 16;

/// How national numbers are read (the rules in the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoneRules {
    /// Country calling code put in front of national numbers, as digits
    /// without `+` (e.g. `"44"`). `None` refuses national numbers: every
    /// number must then start with `+` or `00`. A value that is not one to
    /// three digits starting with 1–9 is treated as `None` (see
    /// [`PhoneRules::validate`]).
    pub default_calling_code: Option<String>,
    /// Trunk prefix dialled before national numbers (`"0"` in most of Europe,
    /// `"1"` in North America, empty in Italy where the `0` is part of the
    /// number; configuration defaults it by the calling code, see
    /// [`default_national_prefix`]); it is stripped once from national
    /// numbers before the calling code is added.
    pub national_prefix: String,
}

impl Default for PhoneRules {
    /// No default country (international numbers only), national prefix `0`.
    fn default() -> Self {
        PhoneRules {
            default_calling_code: None,
            national_prefix: "0".to_owned(),
        }
    }
}

impl PhoneRules {
    /// Rules with a default country calling code and its usual trunk
    /// prefix ([`default_national_prefix`]).
    pub fn with_calling_code(code: &str) -> Self {
        PhoneRules {
            default_calling_code: Some(code.to_owned()),
            national_prefix: default_national_prefix(Some(code)).to_owned(),
        }
    }

    /// Checks the rules as configuration: the calling code is one to three
    /// ASCII digits not starting with 0, of its zone's length (see
    /// `is_calling_code`), the national prefix at most three
    /// ASCII digits. The error names the field that is wrong and why, for
    /// `on_configure`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if let Some(code) = &self.default_calling_code {
            if !is_calling_code(code) {
                return Err((
                    "default_calling_code",
                    "must be a calling code: 1 to 3 digits, not starting with 0, as long as its zone's (`44`, not `440` or `4`)",
                ));
            }
        }
        if self.national_prefix.len() > 3
            || !self.national_prefix.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(("national_prefix", "must be at most 3 digits"));
        }
        Ok(())
    }
}

/// One to three digits, not starting with 0, and as long as the codes of
/// its zone are ([`calling_code_len`]: `44`, not `440` or `4`): no number
/// has any other, and one normalised under it is then read with another
/// code (`440` + `7700…` as `+44 07700…`), so denied prefixes and
/// per-number limits apply to numbers other than those meant.
fn is_calling_code(code: &str) -> bool {
    (1..=3).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_digit())
        && !code.starts_with('0')
        && calling_code_len(code) == code.len()
}

/// Why a phone number (or a configured prefix) was refused. The messages
/// never contain the number itself, so they are safe to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhoneError {
    /// The input holds no digits at all (empty, only separators, a lone `+`).
    Empty,
    /// The input is longer than [`MAX_INPUT_BYTES`]; it was not parsed.
    TooLong,
    /// A byte that is neither an ASCII digit, an accepted separator nor an
    /// accepted `+`, at this byte offset (non-ASCII characters included).
    InvalidCharacter {
        /// Byte offset of the offending character in the input.
        at: usize,
    },
    /// A second `+`, or a `+` after a digit.
    MisplacedPlus,
    /// A national number (no `+` or `00`) and no default calling code.
    NoCountry,
    /// A configured prefix that is not international (`+` or `00`).
    NotInternational,
    /// The first digit after the international prefix is 0: no country
    /// calling code starts with 0.
    InvalidCountryCode,
    /// Fewer than [`MIN_DIGITS`] digits after normalisation.
    TooShort,
    /// More than [`MAX_DIGITS`] digits after normalisation.
    TooLongDigits,
    /// A number of a zone whose plan fixes every number's shape that does
    /// not have it (rule 8): `+1` and `+7` numbers are ten digits after
    /// the calling code, and a `+1` area code and exchange start with 2–9.
    OutsidePlan,
}

impl fmt::Display for PhoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhoneError::Empty => f.write_str("no digits"),
            PhoneError::TooLong => write!(f, "longer than {MAX_INPUT_BYTES} bytes"),
            PhoneError::InvalidCharacter { at } => {
                write!(f, "invalid character at byte {at} (only ASCII digits, one leading '+', space - . ( ) /)")
            }
            PhoneError::MisplacedPlus => {
                f.write_str("'+' only allowed once, before the first digit")
            }
            PhoneError::NoCountry => f.write_str(
                "national number without a country calling code (no default_calling_code)",
            ),
            PhoneError::NotInternational => f.write_str("must start with '+' or '00'"),
            PhoneError::InvalidCountryCode => f.write_str("country calling code starts with 0"),
            PhoneError::TooShort => write!(f, "fewer than {MIN_DIGITS} digits"),
            PhoneError::TooLongDigits => write!(f, "more than {MAX_DIGITS} digits"),
            PhoneError::OutsidePlan => f.write_str(
                "not a number of its zone (+1 and +7: 10 digits after the calling code; +1: area code and exchange from 2 to 9)",
            ),
        }
    }
}

impl std::error::Error for PhoneError {}

/// A phone number in E.164 form: `+` and 7 to 15 ASCII digits, the first not
/// 0. Only [`normalize`] makes one, so holding an `E164` means the rules held.
///
/// `Debug` does not print the number (a struct holding one may be logged);
/// use [`E164::as_str`] where the number itself is needed, and [`hash`]
/// wherever it leaves the filter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// The canonical form, e.g. `"+447700900123"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without the `+`, e.g. `"447700900123"`.
    pub fn digits(&self) -> &str {
        self.0.strip_prefix('+').unwrap_or(&self.0)
    }

    /// The number without a trunk prefix written right after its country
    /// calling code (`+44 07700 900123` → `+447700900123`, `+1 1 900 555
    /// 1234` → `+19005551234`; see `split_trunk`), or `None` when there
    /// is none. Carriers and SMS gateways drop it (libphonenumber strips the
    /// national prefix from international input too), so both spellings
    /// reach one phone: denied prefixes and per-number limits must treat
    /// them as one. The calling code's length comes from the ITU
    /// assignment (see [`calling_code_len`]).
    pub fn without_trunk_prefix(&self) -> Option<E164> {
        let (cc, rest) = split_trunk(self.digits(), true)?;
        let number = format!("{cc}{rest}");
        check_digits(&number, MIN_DIGITS).ok()?;
        Some(E164(format!("+{number}")))
    }

    /// Whether a trunk prefix follows the calling code twice (`+44 00 909
    /// …`, `+1 1 0 …`): no number is written so, and a gateway that drops
    /// every `0` there would deliver it to `+44 909 …`, past a denied
    /// prefix and a per-number limit that read it with one `0` dropped.
    /// A trunk prefix read off by its length in a whole number counts
    /// too where more digits follow it (Hungary's `06`: `+36 06 06 90 …`),
    /// so `split_trunk` is asked both ways.
    pub fn trunk_written_twice(&self) -> bool {
        [true, false].into_iter().any(|whole| {
            split_trunk(self.digits(), whole).is_some_and(|(_, rest)| rest.starts_with('0'))
        })
    }
}

/// `digits` (international, without `+`) as its calling code and what
/// follows a trunk prefix right after it; `None` when there is none. The
/// trunk prefix is `0`, except where the `0` is part of the number
/// ([`ZERO_IS_SIGNIFICANT`]: none), and besides:
/// - `1` in North America (`+1 1 900 …`): no area code starts with it;
/// - `06` in Hungary (`+36 06 90 …`), in a whole number only where what
///   follows it is as long as a Hungarian number (eight or nine digits):
///   `+36 0 62 …` is Szeged (`62`) with a trunk `0`;
/// - `8` in Russia and Kazakhstan (`+7`), Lithuania (`+370`) and
///   Turkmenistan (`+993`), only in a whole number (`whole`) one digit
///   longer than their national numbers (ten, eight and eight digits), as
///   libphonenumber reads it: `+7 8 809 …` is `+7 809 …`, while
///   `+7 812 …` is St Petersburg;
/// - `1` in Mexico (`+52`), the mobile prefix of before 2019, only where
///   ten digits follow it (`+52 1 55 …` is `+52 55 …`);
/// - `8` or `80` in Belarus (`+375`), only in a whole number and before
///   nine digits that do not start with `0`, or ten of its premium
///   ranges `810…` and `9…` (`+375 8 029 …` and `+375 80 29 …` are
///   `+375 29 …`).
///
/// The one rule for numbers ([`E164::without_trunk_prefix`]) and
/// configured prefixes alike.
fn split_trunk(digits: &str, whole: bool) -> Option<(&str, &str)> {
    let cc = digits.get(..calling_code_len(digits))?;
    if ZERO_IS_SIGNIFICANT.contains(&cc) {
        return None;
    }
    let rest = digits.get(cc.len()..)?;
    // `prefix` read off a whole number only where `national` digits follow.
    let by_length = |prefix: char, national: usize| {
        rest.strip_prefix(prefix)
            .filter(|n| whole && n.len() == national)
    };
    let own = match cc {
        "1" => rest.strip_prefix('1'),
        "36" => rest
            .strip_prefix("06")
            .filter(|n| !whole || (8..=9).contains(&n.len())),
        "7" => by_length('8', 10),
        "370" => by_length('8', 8),
        // Turkmenistan's `8` before its eight digits (which start 1–6).
        "993" => by_length('8', 8),
        // Belarus's `8`, and `80` (libphonenumber's `0|80?`), before nine
        // digits, or ten of its premium `810…` and `9…` ranges (`+375 8 902
        // …`); never
        // before a `0`, so that a toll-free `+375 800 …` or `820 …` stays.
        "375" => {
            let national = |n: &&str| {
                whole
                    && !n.starts_with('0')
                    && (n.len() == 9
                        || (n.len() == 10 && (n.starts_with('9') || n.starts_with("810"))))
            };
            rest.strip_prefix("80")
                .filter(national)
                .or_else(|| rest.strip_prefix('8').filter(national))
        }
        // Mexico's old mobile `1` before the ten digits (`+52 1 55 …`).
        "52" => by_length('1', 10),
        _ => None,
    };
    Some((cc, own.or_else(|| rest.strip_prefix('0'))?))
}

/// The trunk prefix national numbers are written with where `calling_code`
/// is the default country: `1` in North America, `06` in Hungary, none
/// where the `0` is part of the number (`ZERO_IS_SIGNIFICANT`: Italy),
/// `0` elsewhere (also for `+7` and `+370`, whose `8` is read off by
/// length: see `split_trunk`). The default of `national_prefix`.
pub fn default_national_prefix(calling_code: Option<&str>) -> &'static str {
    match calling_code {
        Some("1") => "1",
        Some("36") => "06",
        Some(cc) if ZERO_IS_SIGNIFICANT.contains(&cc) => "",
        _ => "0",
    }
}

/// Calling codes whose numbers keep their leading `0` in international
/// form (Italy's `+39 06 …`, San Marino, the Vatican, Côte d'Ivoire, the
/// Republic of the Congo): there `+39 030 …` (Brescia) and `+39 30 …` are
/// different numbers, so the `0` is never dropped.
const ZERO_IS_SIGNIFICANT: [&str; 5] = ["39", "378", "379", "225", "242"];

/// The length of the country calling code that `digits` (an E.164 number
/// without `+`) starts with, by the ITU-T E.164 assignment: zones 1 (NANP)
/// and 7 have one digit; the two-digit codes are listed; every other code
/// has three digits. Calling codes are a prefix code, so the first digits
/// decide.
pub fn calling_code_len(digits: &str) -> usize {
    const TWO_DIGIT: [&str; 44] = [
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
        "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
        "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
    ];
    if digits.starts_with('1') || digits.starts_with('7') {
        1
    } else if digits.get(..2).is_some_and(|cc| TWO_DIGIT.contains(&cc)) {
        2
    } else {
        3
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("E164(<redacted>)")
    }
}

/// The result of scanning an input: its digits (capped by the input size)
/// and whether it started with `+`.
struct Scanned {
    /// Whether the input began with `+`: then the digits start with the calling
    /// code; otherwise they are `00` and the code, or a national number.
    plus: bool,
    /// The digits alone, separators and a `(0)` after the calling code left
    /// out.
    digits: String,
}

/// Applies rules 1–3 and 5 of the module documentation: size, characters,
/// `+` placement, `(0)` groups in international numbers.
fn scan(input: &str) -> Result<Scanned, PhoneError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(PhoneError::TooLong);
    }
    let bytes = input.as_bytes();
    let mut digits = String::with_capacity(MAX_DIGITS + 2);
    let mut plus = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'0'..=b'9' => digits.push(char::from(b)),
            b'+' => {
                if plus || !digits.is_empty() {
                    return Err(PhoneError::MisplacedPlus);
                }
                plus = true;
            }
            b'(' => {
                // `(0)` right after the calling code of an international
                // number (after `+` or `00`). Anywhere else its `0` is a
                // digit of the number, as libphonenumber and gateways read
                // it: dropping it would let `+44 7(0)…` past a `+44 70`
                // prefix and give one phone several rate-limit keys.
                let code = if plus {
                    Some(digits.as_str())
                } else {
                    digits.strip_prefix("00")
                };
                // Only where the trunk prefix is `0` alone: where the `0`
                // is part of the number (Italy's `+39 (0)6 …` is `+39 06
                // …`), or the start of a longer trunk prefix (Hungary's
                // `+36 (0)6 90 …` is `+36 06 90 …`, read off as `06` by
                // `split_trunk`: dropping the `0` alone left `+36 690 …`,
                // past a denied `+36 90`), or no trunk prefix at all
                // (North America's is `1`), it stays a digit.
                let after_calling_code = code.is_some_and(|c| {
                    !c.is_empty()
                        && c.len() == calling_code_len(c)
                        && default_national_prefix(Some(c)) == "0"
                });
                if after_calling_code
                    && bytes.get(i + 1) == Some(&b'0')
                    && bytes.get(i + 2) == Some(&b')')
                {
                    i += 3;
                    continue;
                }
            }
            b' ' | b'-' | b'.' | b')' | b'/' => {}
            _ => return Err(PhoneError::InvalidCharacter { at: i }),
        }
        i += 1;
    }
    if digits.is_empty() {
        return Err(PhoneError::Empty);
    }
    Ok(Scanned { plus, digits })
}

/// A national number's digits without the trunk prefix written before
/// them (stripped once; an empty prefix strips nothing).
fn national_digits<'d>(digits: &'d str, rules: &PhoneRules) -> &'d str {
    digits
        .strip_prefix(rules.national_prefix.as_str())
        .unwrap_or(digits)
}

/// Normalises a phone number to E.164 by the rules of the module
/// documentation. The error never contains the number.
pub fn normalize(input: &str, rules: &PhoneRules) -> Result<E164, PhoneError> {
    let Scanned { plus, digits } = scan(input)?;
    let number = if plus {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else {
        let code = rules
            .default_calling_code
            .as_deref()
            .filter(|c| is_calling_code(c))
            .ok_or(PhoneError::NoCountry)?;
        let national = national_digits(&digits, rules);
        let mut number = String::with_capacity(code.len() + national.len());
        number.push_str(code);
        number.push_str(national);
        number
    };
    check_digits(&number, MIN_DIGITS)?;
    check_plan(&number)?;
    Ok(E164(format!("+{number}")))
}

/// The calling codes of countries whose international call prefixes
/// include `00` followed by more digits (a carrier's or a service's, from
/// libphonenumber's `internationalPrefix`): Brazil's `00` and a two-digit
/// carrier code, Colombia's `005`, `007`, `009`, Australia's `0011`,
/// `0014`…, Indonesia's `008`, `009`, Singapore's `001`, `002`, `008`…,
/// Thailand's `001`–`009`, South Korea's `001`, `002`, `005`, `008`,
/// `00700`…, Nigeria's `009`, Kenya's `000`, Tanzania's `000`, `005`,
/// `006`, Uganda's `000`, `005`, `007`, Hong Kong's `001`, `0060`…,
/// Cambodia's `001`, `004`–`009`, Taiwan's `002`, `005`–`007`, `009`,
/// Mongolia's `001`, Bolivia's `0010`–`0019`, Guyana's `001`. An upstream
/// parsing numbers for such a country reads
/// `002 882 …` as `+882 …`; appguard, reading `00` alone, as `+2882 …`.
pub const CARRIER_PREFIX_COUNTRIES: [&str; 17] = [
    "55", "57", "61", "62", "65", "66", "82", "234", "254", "255", "256", "591", "592", "852",
    "855", "886", "976",
];

/// The international call prefixes other than `00` of the countries that
/// dial abroad with one (libphonenumber's `internationalPrefix`, spelt
/// out; `x` is any digit), by default calling code: where a number is
/// written with one, an upstream parsing numbers for that country dials
/// what follows it, and appguard, which reads `00` alone, a national
/// number. [`other_readings`] reads it both ways. `00` and one to three
/// digits more (carriers' prefixes) are [`CARRIER_PREFIX_COUNTRIES`]';
/// `011` under `+1` makes numbers of no valid shape there (rule 8: the
/// area code would start with `0`), so is refused. `810` under `+7` does
/// too, but not before an eight-digit number (`810 682 71234`, Cook
/// Islands), which rule 8 reads as `+7`, the trunk `8` and ten digits, nor
/// (where the national prefix is not `8`) a seven-digit one (`810 683
/// 4123`, Niue: `+7 810 683 4123`): it is listed. Left out: Australia's
/// `14XX0011` and China's `1XXXX00`, after which no number fits in 15
/// digits with the calling code.
pub const ABROAD_PREFIXES: [(&str, &[&str]); 29] = [
    ("7", &["810"]),                                             // Russia, Kazakhstan
    ("51", &["191100", "191200", "191400", "197700", "199000"]), // Peru
    ("52", &["09"]),                                             // Mexico
    ("53", &["119"]),                                            // Cuba
    // Chile: `1XY0` for the carriers XY, or `00`.
    (
        "56",
        &[
            "1100", "1110", "1120", "1130", "1140", "1150", "1160", "1190", "1200", "1220", "1230",
            "1240", "1250", "1510", "1530", "1540", "1550", "1580", "1690", "1700", "1710", "1760",
            "1770", "1800", "1810", "1880",
        ],
    ),
    ("64", &["0161"]),                                           // New Zealand
    ("65", &["01x", "02x", "03x"]),                              // Singapore (`00X`: a carrier's)
    ("81", &["010"]),                                            // Japan
    ("230", &["020", "030", "033", "040", "050", "060", "070"]), // Mauritius
    ("235", &["16"]),                                            // Chad
    ("238", &["0"]),                                             // Cape Verde
    ("248", &["01", "010", "02"]),                               // Seychelles
    ("354", &["1001", "1010", "1020", "1100"]),                  // Iceland
    // Finland (and Åland): `99X`, and `995XY` for the carriers XY.
    (
        "358",
        &[
            "990", "991", "994", "996", "999", "99511", "99541", "99532", "99533", "99555",
            "99559", "99577", "99588", "99590", "99599",
        ],
    ),
    ("375", &["810"]),                          // Belarus
    ("386", &["1022", "1066", "1088", "1099"]), // Slovenia
    // Uruguay: `01YX` for Y of 3 to 9.
    (
        "598",
        &["013x", "014x", "015x", "016x", "017x", "018x", "019x"],
    ),
    ("675", &["1401", "1402", "1403"]), // Papua New Guinea
    ("677", &["01"]),                   // Solomon Islands
    ("679", &["052"]),                  // Fiji
    ("680", &["011", "012"]),           // Palau
    ("685", &["0"]),                    // Samoa
    ("692", &["011"]),                  // Marshall Islands
    ("850", &["99"]),                   // North Korea
    ("886", &["019"]),                  // Taiwan (`00X`: a carrier's)
    ("960", &["019"]),                  // Maldives
    // Israel: `01X` and `0105` for the carriers.
    (
        "972",
        &[
            "012", "013", "014", "015", "016", "017", "018", "019", "0105",
        ],
    ),
    ("992", &["810"]), // Tajikistan
    ("993", &["810"]), // Turkmenistan
];

/// What follows `prefix` (digits, `x` for any digit) in `digits`, when
/// `digits` starts with it.
fn after_prefix<'d>(digits: &'d str, prefix: &str) -> Option<&'d str> {
    let head = digits.as_bytes().get(..prefix.len())?;
    let matches = head
        .iter()
        .zip(prefix.bytes())
        .all(|(&d, p)| d == p || (p == b'x' && d.is_ascii_digit()));
    if matches {
        digits.get(prefix.len()..)
    } else {
        None
    }
}

/// Other readings of `input` than [`normalize`]'s that an upstream may
/// dial, for checking denied prefixes (a number is denied if any reading
/// is; it is still counted under [`normalize`]'s alone):
///
/// - under a default country of [`CARRIER_PREFIX_COUNTRIES`], a number
///   written with `00` read without the one to three digits after it that
///   a carrier's prefix adds (`002 882 …` is `+882 …` in South Korea);
/// - under a default country, a national number that starts with that
///   country's calling code, and is longer than the country's national
///   numbers with it (`longest_national`: ten digits for most two-digit
///   codes, eight in Denmark), read as international (`44 70 …` under `44`, `+44 4470
///   …` to [`normalize`], is `+44 70 …` to libphonenumber, which drops a
///   calling code that makes the number too long; Italy's `393 …` mobiles
///   stay national).
///
/// - under a default country that dials abroad with another prefix than
///   `00` ([`ABROAD_PREFIXES`]: Japan's `010`, Israel's `012`–`019`,
///   Finland's `99X`, …), a number written with it read without it
///   (`010 1 900 …` is `+1 900 …` in Japan); and under Japan's, a number
///   after its carrier prefix for
///   national calls `003768` read as Japanese (`0037680 990 …` is `+81 990
///   …`).
///
/// Only readings with a valid shape (rules 7 and 8) are given.
pub fn other_readings(input: &str, rules: &PhoneRules) -> Vec<E164> {
    let Ok(Scanned { plus, digits }) = scan(input) else {
        return Vec::new();
    };
    let Some(code) = rules.default_calling_code.as_deref() else {
        return Vec::new();
    };
    if plus || !is_calling_code(code) {
        return Vec::new();
    }
    let valid =
        |number: &str| check_digits(number, MIN_DIGITS).is_ok() && check_plan(number).is_ok();
    let mut out = Vec::new();
    // Where the country dials abroad with another prefix than `00`
    // (libphonenumber's `internationalPrefix`, [`ABROAD_PREFIXES`]):
    // Japan's `010`, Israel's `012`, Finland's `990`, … Read as national
    // numbers of a valid length, they went past the denied prefixes of
    // where they are dialled.
    let prefixes = ABROAD_PREFIXES
        .iter()
        .find(|(cc, _)| *cc == code)
        .map_or(&[][..], |(_, p)| *p);
    for prefix in prefixes {
        if let Some(number) = after_prefix(&digits, prefix).filter(|n| valid(n)) {
            let reading = E164(format!("+{number}"));
            if !out.contains(&reading) {
                out.push(reading);
            }
        }
    }
    // Japan's carrier prefix for national calls (`003768`, and the trunk
    // `0` after it or not): `0037680 990 …` is `+81 990 …` there, and
    // `+376 80990 …` to `00`.
    if let Some(rest) = digits.strip_prefix("003768").filter(|_| code == "81") {
        let number = format!("81{}", rest.strip_prefix('0').unwrap_or(rest));
        if valid(&number) {
            out.push(E164(format!("+{number}")));
        }
    }
    if let Some(rest) = digits.strip_prefix("00") {
        if CARRIER_PREFIX_COUNTRIES.contains(&code) {
            for skip in 1..=3 {
                if let Some(number) = rest.get(skip..).filter(|n| valid(n)) {
                    out.push(E164(format!("+{number}")));
                }
            }
        }
    } else {
        let national = national_digits(&digits, rules);
        if national.len() > longest_national(code) && digits.starts_with(code) && valid(&digits) {
            out.push(E164(format!("+{digits}")));
        }
    }
    out
}

/// The most digits a national number of `code` has (libphonenumber's
/// longest possible length): a national reading longer than this is too
/// long for the country, and libphonenumber then reads a calling code
/// written without `+` in front of it as that code. Ten for a two-digit
/// code (as in the United Kingdom, Germany, Italy), nine for a
/// three-digit one, eleven for `1` and `7`, unless listed: countries of
/// shorter numbers, where `32 900 12345` (Belgium, nine digits at most)
/// is `+32 900 12345` to libphonenumber, and `36 90 123 456` (Hungary,
/// nine) `+36 90 123 456`.
fn longest_national(code: &str) -> usize {
    match code {
        // Belgium: 8 (fixed, premium `90x`) or 9 (mobile).
        "32" => 9,
        // Denmark (premium `90`), Norway (premium `820`): eight.
        "45" | "47" => 8,
        // Hungary: 8 (fixed, premium `90`/`91`) or 9 (mobile).
        "36" => 9,
        _ => 12usize.saturating_sub(code.len()),
    }
}

/// Rule 8: the zones whose plan fixes every number's shape. A `+1` (North
/// America) number is NPA-NXX-XXXX, ten digits whose area code and
/// exchange start with 2–9; a `+7` (Russia, Kazakhstan) number is ten
/// digits. Each may have its trunk prefix written after the calling code
/// once (`+1 1 415 …`, `+7 8 909 …`, see [`E164::without_trunk_prefix`]).
/// Anything else is an international call prefix read as part of a
/// number: `011 882 …` under a `1` default is `+882 …` to whoever dials
/// it, as are `001 882 …` and `0011 882 …` (South Korea's, Australia's)
/// read as `00` + `1 …`, and `8 10 882 …` under a `7` default.
fn check_plan(number: &str) -> Result<(), PhoneError> {
    let (national, trunk, nanp) = match number.as_bytes().first() {
        Some(b'1') => (number.get(1..).unwrap_or(""), '1', true),
        Some(b'7') => (number.get(1..).unwrap_or(""), '8', false),
        _ => return Ok(()),
    };
    let national = match national.strip_prefix(trunk) {
        Some(rest) if national.len() == 11 => rest,
        _ => national,
    };
    let b = national.as_bytes();
    let from_2 = |i: usize| b.get(i).is_some_and(|d| (b'2'..=b'9').contains(d));
    if b.len() == 10 && (!nanp || (from_2(0) && from_2(3))) {
        Ok(())
    } else {
        Err(PhoneError::OutsidePlan)
    }
}

/// Rule 7: length and first digit. `number` holds only ASCII digits.
fn check_digits(number: &str, min: usize) -> Result<(), PhoneError> {
    if number.len() > MAX_DIGITS {
        return Err(PhoneError::TooLongDigits);
    }
    if number.starts_with('0') {
        return Err(PhoneError::InvalidCountryCode);
    }
    if number.len() < min {
        return Err(if number.is_empty() {
            PhoneError::Empty
        } else {
            PhoneError::TooShort
        });
    }
    Ok(())
}

/// A configured denied prefix that could not be read: its position in the
/// list and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixError {
    /// Index of the prefix in the configured list.
    pub index: usize,
    /// What is wrong with it.
    pub error: PhoneError,
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]: {}", self.index, self.error)
    }
}

impl std::error::Error for PrefixError {}

/// Denied number prefixes (premium-rate ranges, whole countries), compiled
/// once at configuration time. Each configured prefix is written like a
/// number (`"+882"`, `"+44 70"`, `"0044 909"`) and read by the same character
/// rules as [`normalize`], but must be international (`+` or `00`) and may
/// have 1 to 15 digits. A number is denied when its E.164 form starts with
/// any of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixSet {
    /// `+digits`, sorted and without duplicates, for binary search.
    prefixes: Vec<String>,
}

impl PrefixSet {
    /// Compiles the configured prefixes; the error names the first bad one by
    /// its index in the list.
    pub fn new<I, S>(prefixes: I) -> Result<PrefixSet, PrefixError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for (index, prefix) in prefixes.into_iter().enumerate() {
            let normalized =
                normalize_prefix(prefix.as_ref()).map_err(|error| PrefixError { index, error })?;
            out.extend(trunkless_prefix(&normalized));
            out.push(normalized);
        }
        out.sort_unstable();
        out.dedup();
        Ok(PrefixSet { prefixes: out })
    }

    /// Whether the number starts with one of the denied prefixes.
    pub fn contains_prefix_of(&self, number: &E164) -> bool {
        self.matching_prefix(number).is_some()
    }

    /// The shortest denied prefix the number starts with, in `+digits` form,
    /// checked for the number as written and without a trunk `0` after its
    /// calling code (`+44 0909 …` is `+44 909 …` to the carrier; see
    /// [`E164::without_trunk_prefix`]). A prefix is not a number, so it may be
    /// logged to say why a number was denied.
    pub fn matching_prefix(&self, number: &E164) -> Option<&str> {
        self.matching_prefix_of(number, number.without_trunk_prefix().as_ref())
    }

    /// [`PrefixSet::matching_prefix`] for a caller that already has the
    /// number's [`E164::without_trunk_prefix`] form (the per-number limits
    /// count under it), so it is not built twice.
    pub fn matching_prefix_of(&self, number: &E164, trunkless: Option<&E164>) -> Option<&str> {
        self.matching_prefix_as_written(number)
            .or_else(|| trunkless.and_then(|n| self.matching_prefix_as_written(n)))
    }

    /// The shortest prefix of the set `number` starts with, as written (the reading
    /// without a trunk `0` is [`PrefixSet::matching_prefix_of`]'s). A binary
    /// search per length, at most 15, however many prefixes there are.
    fn matching_prefix_as_written(&self, number: &E164) -> Option<&str> {
        let s = number.as_str();
        // Every candidate is `+` and 1..=15 digits: at most 15 lookups.
        (2..=s.len())
            .filter_map(|end| s.get(..end))
            .find_map(|candidate| {
                self.prefixes
                    .binary_search_by(|p| p.as_str().cmp(candidate))
                    .ok()
                    .and_then(|i| self.prefixes.get(i))
                    .map(String::as_str)
            })
    }

    /// The number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// Whether no prefix is denied.
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }
}

/// A configured prefix written with a trunk `0` after its calling code
/// (`+44 0871`, copied from a national `0871` range): the prefix of the
/// same numbers written without it (`+44 871`), which is how they are
/// usually sent and how carriers reach them. Numbers are matched in both
/// forms ([`E164::without_trunk_prefix`]); without this, such a prefix
/// matched only the rarer spelling. `None` where the `0` is part of the
/// number (Italy), or nothing follows it.
fn trunkless_prefix(prefix: &str) -> Option<String> {
    let (cc, rest) = split_trunk(prefix.strip_prefix('+')?, false)?;
    (!rest.is_empty()).then(|| format!("+{cc}{rest}"))
}

/// A configured prefix in `+digits` form: international, 1..=15 digits.
fn normalize_prefix(input: &str) -> Result<String, PhoneError> {
    let Scanned { plus, digits } = scan(input)?;
    let number = if plus {
        digits.as_str()
    } else {
        digits
            .strip_prefix("00")
            .ok_or(PhoneError::NotInternational)?
    };
    check_digits(number, 1)?;
    Ok(format!("+{number}"))
}

/// The keyed hash of a number, for rate-limit descriptors, logs and metrics:
/// HMAC-SHA256(`key`, the ASCII bytes of [`E164::as_str`], `+` included),
/// as lower-case hex of the first [`HASH_BYTES`] (16) bytes, 32 characters.
/// The same key and number always give the same string, so every Envoy
/// instance counts one number under one key; without the key the value
/// cannot be traced back to the number. `key` should be at least
/// [`MIN_KEY_BYTES`] random bytes (32 is the natural size for HMAC-SHA256).
pub fn hash(key: &[u8], number: &E164) -> String {
    let mac = hmac_sha256::HMAC::mac(number.as_str().as_bytes(), key);
    crate::hex_lower(mac.get(..HASH_BYTES).unwrap_or(&mac))
}

#[cfg(test)]
mod tests {

    #[test]
    fn other_readings_are_a_carriers_prefix_dropped_and_a_calling_code_without_plus() {
        let kr = PhoneRules::with_calling_code("82");
        let digits = |input: &str, rules: &PhoneRules| -> Vec<String> {
            other_readings(input, rules)
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect()
        };
        assert_eq!(
            digits("002 882 1234 5678", &kr),
            ["+88212345678", "+8212345678", "+212345678"]
        );
        // `+` numbers, and countries whose only prefix is `00`, have none.
        assert!(digits("+882 1234 5678", &kr).is_empty());
        let gb = PhoneRules::with_calling_code("44");
        assert!(digits("002 882 1234 5678", &gb).is_empty());
        assert!(digits("002 882 1234 5678", &PhoneRules::default()).is_empty());
        // A calling code without `+`, when the national reading is too long.
        assert_eq!(digits("44 70 1234 5678", &gb), ["+447012345678"]);
        assert!(digits("07700 900123", &gb).is_empty());
        // Italy's mobiles starting `39` stay national: 12 digits with it.
        let it = PhoneRules::with_calling_code("39");
        assert!(digits("393 123 4567", &it).is_empty());
        // Readings of no valid shape are left out.
        assert!(digits("000 1", &kr).is_empty());
    }
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn abroad_prefixes_are_read_off_and_well_formed() {
        let il = PhoneRules::with_calling_code("972");
        let readings: Vec<String> = other_readings("012 882 1234 567", &il)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        assert_eq!(readings, ["+8821234567"]);
        // `x` is one digit, any; no reading without the whole prefix.
        assert_eq!(after_prefix("0134882", "013x"), Some("882"));
        assert_eq!(after_prefix("013", "013x"), None);
        assert_eq!(after_prefix("0124882", "013x"), None);
        let mut seen = Vec::new();
        for (cc, prefixes) in ABROAD_PREFIXES {
            assert!(is_calling_code(cc), "{cc}");
            assert!(!seen.contains(&cc), "{cc} twice: only the first is read");
            seen.push(cc);
            assert!(!prefixes.is_empty(), "{cc}");
            for p in prefixes {
                assert!(
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b'x'),
                    "{cc}: {p:?}"
                );
                assert!(!p.starts_with("00"), "{cc}: {p:?} is `00`'s");
            }
        }
    }

    fn uk() -> PhoneRules {
        PhoneRules::with_calling_code("44")
    }

    fn norm(input: &str, rules: &PhoneRules) -> Result<String, PhoneError> {
        normalize(input, rules).map(|n| n.as_str().to_owned())
    }

    #[test]
    fn many_spellings_of_one_number_give_one_e164() {
        let spellings = [
            "+447700900123",
            "+44 7700 900123",
            "+44 7700-900-123",
            "+44.7700.900.123",
            "+44 (7700) 900123",
            "(+44) 7700 900123",
            "+44 (0)7700 900123",
            "+44 (0) 7700 900 123",
            "+44/7700/900123",
            " +44 7700 900123 ",
            "+ 44 7700 900123",
            "00447700900123",
            "0044 7700 900123",
            "0044 (0)7700 900123",
            "07700 900123",
            "07700-900-123",
            "(07700) 900123",
            "(0)7700 900123",
            "7700900123",
        ];
        for s in spellings {
            assert_eq!(norm(s, &uk()), Ok("+447700900123".to_owned()), "{s:?}");
        }
    }

    #[test]
    fn international_numbers_need_no_default_country() {
        let rules = PhoneRules::default();
        assert_eq!(
            norm("+1 (415) 555-2671", &rules),
            Ok("+14155552671".to_owned())
        );
        assert_eq!(
            norm("0033 6 12 34 56 78", &rules),
            Ok("+33612345678".to_owned())
        );
        assert_eq!(norm("07700 900123", &rules), Err(PhoneError::NoCountry));
    }

    #[test]
    fn national_prefix_is_configurable() {
        let us = PhoneRules {
            default_calling_code: Some("1".to_owned()),
            national_prefix: "1".to_owned(),
        };
        assert_eq!(norm("1 (415) 555-2671", &us), Ok("+14155552671".to_owned()));
        assert_eq!(norm("(415) 555-2671", &us), Ok("+14155552671".to_owned()));
        // Italy: no trunk prefix, the leading 0 belongs to the number.
        let it = PhoneRules {
            default_calling_code: Some("39".to_owned()),
            national_prefix: String::new(),
        };
        assert_eq!(norm("06 1234 5678", &it), Ok("+390612345678".to_owned()));
        assert_eq!(
            norm("+39 06 1234 5678", &it),
            Ok("+390612345678".to_owned())
        );
        // The prefix is stripped once only: `00` then reads as the
        // international prefix (here `+7 700…`, nine digits: no `+7`
        // number, rule 8).
        assert_eq!(norm("003312345678", &uk()), Ok("+3312345678".to_owned()));
        assert_eq!(norm("0 03312 345678", &uk()), Ok("+3312345678".to_owned()));
        assert_eq!(norm("007700900123", &uk()), Err(PhoneError::OutsidePlan));
    }

    #[test]
    fn bad_default_calling_code_refuses_national_numbers() {
        // A code of another length than its zone's (`calling_code_len`):
        // no number has it.
        for code in [
            "", "0", "044", "4444", "4a", "+44", "4", "440", "9", "21", "80", "10", "710",
        ] {
            let rules = PhoneRules::with_calling_code(code);
            assert!(rules.validate().is_err(), "{code:?}");
            assert_eq!(
                norm("07700 900123", &rules),
                Err(PhoneError::NoCountry),
                "{code:?}"
            );
            assert_eq!(
                norm("+447700900123", &rules),
                Ok("+447700900123".to_owned())
            );
        }
        assert!(uk().validate().is_ok());
        assert!(PhoneRules::default().validate().is_ok());
        let bad_prefix = PhoneRules {
            national_prefix: "x".to_owned(),
            ..uk()
        };
        assert!(bad_prefix.validate().is_err());
    }

    #[test]
    fn letters_and_control_characters_are_refused() {
        let cases = [
            ("+44 7700 900123 ext 5", 16),
            ("+44 7700 9OO123", 10),
            ("tel:+447700900123", 0),
            ("+44\t7700900123", 3),
            ("+44\n7700900123", 3),
            ("+44\u{0}7700900123", 3),
            ("+44_7700900123", 3),
            ("+44,7700900123", 3),
            ("*447700900123", 0),
            ("#447700900123", 0),
        ];
        for (s, at) in cases {
            assert_eq!(
                norm(s, &uk()),
                Err(PhoneError::InvalidCharacter { at }),
                "{s:?}"
            );
        }
    }

    #[test]
    fn non_ascii_digits_and_spaces_are_refused() {
        for s in [
            "+٤٤٧٧٠٠٩٠٠١٢٣",              // Arabic-Indic digits
            "+۴۴۷۷۰۰۹۰۰۱۲۳",              // Extended Arabic-Indic (Persian)
            "＋４４７７００９００１２３", // full-width plus and digits
            "+４４７７００９００１２３",  // full-width digits
            "+44 7700\u{a0}900123",       // no-break space
            "+44 7700\u{2011}900123",     // non-breaking hyphen
            "+44 7700 90012３",
            "+4477009001२३", // Devanagari
        ] {
            assert!(
                matches!(
                    norm(s, &uk()),
                    Err(PhoneError::InvalidCharacter { .. } | PhoneError::TooLong)
                ),
                "{s:?}"
            );
        }
        // The offset of the first non-ASCII byte is reported, not a char index.
        assert_eq!(
            norm("+44٤", &uk()),
            Err(PhoneError::InvalidCharacter { at: 3 })
        );
    }

    #[test]
    fn plus_only_once_and_first() {
        for s in [
            "++447700900123",
            "+44+7700900123",
            "44+7700900123",
            "+44 7700 900123+",
            "+ +447700900123",
        ] {
            assert_eq!(norm(s, &uk()), Err(PhoneError::MisplacedPlus), "{s:?}");
        }
    }

    #[test]
    fn sizes_are_capped() {
        assert_eq!(norm("", &uk()), Err(PhoneError::Empty));
        assert_eq!(norm("   ", &uk()), Err(PhoneError::Empty));
        assert_eq!(norm("+", &uk()), Err(PhoneError::Empty));
        assert_eq!(norm("( ) - .", &uk()), Err(PhoneError::Empty));
        assert_eq!(norm("00", &uk()), Err(PhoneError::Empty));
        let long = "1".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(norm(&long, &uk()), Err(PhoneError::TooLong));
        let huge = "+44 ".repeat(100_000);
        assert_eq!(norm(&huge, &uk()), Err(PhoneError::TooLong));
        // 64 bytes of separators and a short number: parsed, then too short.
        let padded = format!("{}+44 123", " ".repeat(MAX_INPUT_BYTES - 7));
        assert_eq!(padded.len(), MAX_INPUT_BYTES);
        assert_eq!(norm(&padded, &uk()), Err(PhoneError::TooShort));
        assert_eq!(norm("+1234", &uk()), Err(PhoneError::TooShort));
        assert_eq!(norm("+683 4002", &uk()), Ok("+6834002".to_owned()));
        assert_eq!(
            norm("+443456789012345", &uk()),
            Ok("+443456789012345".to_owned())
        );
        assert_eq!(
            norm("+4434567890123456", &uk()),
            Err(PhoneError::TooLongDigits)
        );
        // Fifteen digits, but no `+1` number (rule 8).
        assert_eq!(
            norm("+123456789012345", &uk()),
            Err(PhoneError::OutsidePlan)
        );
        // A national number that the calling code pushes past 15 digits.
        assert_eq!(
            norm("12345678901234", &uk()),
            Err(PhoneError::TooLongDigits)
        );
    }

    #[test]
    fn country_code_never_starts_with_zero() {
        assert_eq!(
            norm("+0447700900123", &uk()),
            Err(PhoneError::InvalidCountryCode)
        );
        assert_eq!(
            norm("+00447700900123", &uk()),
            Err(PhoneError::InvalidCountryCode)
        );
        assert_eq!(
            norm("000447700900123", &uk()),
            Err(PhoneError::InvalidCountryCode)
        );
    }

    #[test]
    fn zero_in_parentheses_only_dropped_inside_international_numbers() {
        // `(0)` before the first digit after `+` is not the trunk marker.
        assert_eq!(
            norm("+(0)447700900123", &uk()),
            Err(PhoneError::InvalidCountryCode)
        );
        // `(0)` right after `00` neither.
        assert_eq!(
            norm("00(0)447700900123", &uk()),
            Err(PhoneError::InvalidCountryCode)
        );
        // Where the calling code keeps its `0` (Italy, San Marino, …),
        // `(0)` after it is that `0`: one Rome phone, one key.
        for written in [
            "+39 (0)6 1234 5678",
            "+39 06 1234 5678",
            "0039 (0)6 1234 5678",
        ] {
            assert_eq!(norm(written, &uk()), Ok("+390612345678".to_owned()));
        }
        assert_eq!(
            norm("+378 (0)549 123456", &uk()),
            Ok("+3780549123456".to_owned())
        );
        // Past the calling code, `(0)` is the digit 0: libphonenumber reads
        // `+44 7(0)…` as `+4470…`, and so must the denied prefixes and the
        // rate-limit key.
        assert_eq!(
            norm("+44 7(0) 1234 5678", &uk()),
            Ok("+447012345678".to_owned())
        );
        assert_eq!(
            norm("+44 770(0) 900123", &uk()),
            Ok("+447700900123".to_owned())
        );
        assert_eq!(
            norm("+1 9(0)0 555 1234", &uk()),
            Ok("+19005551234".to_owned())
        );
        assert_eq!(
            norm("0044 7(0)0 1234 5678", &uk()),
            Ok("+4470012345678".to_owned())
        );
        // Inside a calling code neither (`+4(0)4` is `+404…`).
        assert_eq!(
            norm("+4(0)4 7700 900123", &uk()),
            Ok("+4047700900123".to_owned())
        );
        // Right after a three-digit code it is the trunk marker again.
        assert_eq!(
            norm("+353 (0)87 123 4567", &uk()),
            Ok("+353871234567".to_owned())
        );
        // `(01)` is an ordinary group.
        assert_eq!(
            norm("+44 (01) 7700 900123", &uk()),
            Ok("+44017700900123".to_owned())
        );
        // A bare 0 after the calling code is kept (no numbering plan here).
        assert_eq!(
            norm("+44 07700 900123", &uk()),
            Ok("+4407700900123".to_owned())
        );
    }

    #[test]
    fn debug_does_not_show_the_number() {
        let n = normalize("+447700900123", &uk()).unwrap();
        assert!(!format!("{n:?}").contains("7700"));
        assert_eq!(n.digits(), "447700900123");
    }

    #[test]
    fn errors_do_not_show_the_number() {
        for s in ["+44 7700 900123 x", "07700900123"] {
            let e = norm(s, &PhoneRules::default()).unwrap_err();
            assert!(!e.to_string().contains("7700"), "{e}");
        }
    }

    #[test]
    fn denied_prefixes() {
        let set = PrefixSet::new(["+882", "+44 70", "0044 909", "+44 (0)871", "+882"]).unwrap();
        assert_eq!(set.len(), 4);
        let denied = |s: &str| set.contains_prefix_of(&normalize(s, &uk()).unwrap());
        assert!(denied("+882 1234 5678"));
        assert!(denied("07000 123456"));
        assert!(denied("+44 909 879 0000"));
        assert!(denied("0871 234 5678"));
        assert!(!denied("+447700900123"));
        assert!(!denied("+88 1234 5678"));
        assert!(!denied("+44 90 1234 5678"));
        let n = normalize("+44 70 1234 5678", &uk()).unwrap();
        assert_eq!(set.matching_prefix(&n), Some("+4470"));
        // Shortest match wins when prefixes nest.
        let nested = PrefixSet::new(["+4470", "+44"]).unwrap();
        assert_eq!(nested.matching_prefix(&n), Some("+44"));
        assert!(PrefixSet::default().is_empty());
        assert!(!PrefixSet::default().contains_prefix_of(&n));
    }

    #[test]
    fn other_international_prefixes_make_no_number_of_the_fixed_plans() {
        // Read as `00` + `1 …`, or as a national number under a `1` or
        // `7` default, these are `+882 …` (or `+44 9 …`) to a dialler in
        // the region whose international prefix they are.
        let us = PhoneRules::with_calling_code("1");
        let ru = PhoneRules::with_calling_code("7");
        for (s, rules) in [
            ("011 882 1234 5678", &us),
            ("011 44 909 876 543", &us),
            ("1 011 882 1234 5678", &us),
            ("001 882 1234 5678", &uk()),
            ("0011 882 1234 5678", &uk()),
            ("0015 882 1234 5678", &uk()),
            ("0014 44 7700 900012", &uk()),
            ("0011 44 7700 900012", &PhoneRules::default()),
            ("8 10 882 1234 5678", &ru),
            ("+1 055 123 4567", &uk()),
            ("+1 415 155 0104", &uk()),
            ("+1 415 555 010", &uk()),
            ("+7 909 123 45 678", &uk()),
        ] {
            assert_eq!(normalize(s, rules), Err(PhoneError::OutsidePlan), "{s}");
        }
        // Their numbers, in every spelling, as before.
        for (s, rules, want) in [
            ("+1 415 555 0104", &uk(), "+14155550104"),
            ("1 (415) 555-0104", &us, "+14155550104"),
            ("415-555-0104", &us, "+14155550104"),
            ("+1 1 415 555 0104", &uk(), "+114155550104"),
            ("+1 900 555 0104", &uk(), "+19005550104"),
            ("001 415 555 0104", &uk(), "+14155550104"),
            ("+7 909 123 45 67", &uk(), "+79091234567"),
            ("8 909 123 45 67", &ru, "+789091234567"),
            ("+7 8 909 123 45 67", &uk(), "+789091234567"),
        ] {
            assert_eq!(
                normalize(s, rules).map(|n| n.as_str().to_owned()),
                Ok(want.to_owned()),
                "{s}"
            );
        }
    }

    #[test]
    fn a_trunk_prefix_written_twice_is_no_number() {
        let twice = |s: &str| normalize(s, &uk()).unwrap().trunk_written_twice();
        for s in [
            "+44 00 909 876 5432",
            "+4400909876543",
            "0044 0 0 7700 900123",
            "+36 0 0 1 234 5678",
        ] {
            assert!(twice(s), "{s}");
        }
        // `+1 1 0 555 …` is no `+1` number in the first place (rule 8).
        assert_eq!(
            normalize("+1 1 0 555 123 4567", &uk()),
            Err(PhoneError::OutsidePlan)
        );
        for s in [
            "+44 0 909 876 5432",
            "+44 7700 900123",
            "0909 876 5432",
            "+39 06 1234 5678",
            "+39 00 1234 5678",
            "+1 900 555 1234",
        ] {
            assert!(!twice(s), "{s}");
        }
    }

    #[test]
    fn a_trunk_zero_after_the_calling_code_does_not_evade_denied_prefixes() {
        // `+44 0909 …` reaches the same premium line as `+44 909 …`.
        let set = PrefixSet::new(["+44 909", "+44 70", "+33 89"]).unwrap();
        let denied = |s: &str| set.contains_prefix_of(&normalize(s, &uk()).unwrap());
        assert!(denied("+44 0909 879 0000"));
        assert!(denied("0044 070 1234 5678"));
        assert!(denied("+33 0 89 12 34 56 78"));
        assert!(!denied("+44 07700 900123"));
        // The code's length is known: Egypt's `+20 1…` is not Tunisia's
        // `+216` with a zero left out.
        let tunisia = PrefixSet::new(["+216"]).unwrap();
        let egypt = normalize("+20 16 1234 5678", &uk()).unwrap();
        assert!(!tunisia.contains_prefix_of(&egypt));
        assert_eq!(egypt.without_trunk_prefix(), None);
        // Where the `0` is part of the number, it stays: Brescia's
        // `+39 030 …` is not under a denied `+39 3` (Italian mobiles).
        let mobiles = PrefixSet::new(["+39 3"]).unwrap();
        let brescia = normalize("+39 030 1234567", &uk()).unwrap();
        assert!(!mobiles.contains_prefix_of(&brescia));
        // A prefix copied with its trunk `0` (`+44 0871` from the national
        // `0871`) denies the usual spelling too; in Italy the `0` stays.
        let copied = PrefixSet::new(["+44 0871", "+33 089", "+39 06", "+44 0"]).unwrap();
        let denied = |s: &str| copied.contains_prefix_of(&normalize(s, &uk()).unwrap());
        assert!(denied("+44 871 234 5678"));
        assert!(denied("+44 0871 234 5678"));
        assert!(denied("0871 234 5678"));
        assert!(denied("+33 89 12 34 56 78"));
        assert!(denied("+39 06 1234 5678"));
        assert!(!denied("+39 6 1234 5678"), "Italy keeps its 0");
        assert!(!denied("+44 7700 900123"), "`+44 0` is not all of +44");
        assert_eq!(trunkless_prefix("+4"), None);
        assert_eq!(trunkless_prefix("+3906"), None);
        assert_eq!(trunkless_prefix("+440871").as_deref(), Some("+44871"));
        // The form per-number limits count under (`policy`'s body phase).
        let key = |n: &E164| n.without_trunk_prefix().unwrap_or_else(|| n.clone());
        assert_eq!(key(&brescia), brescia);
        assert!(mobiles.contains_prefix_of(&normalize("+39 347 1234567", &uk()).unwrap()));
        // One number, one rate-limit key.
        let a = normalize("+44 07700 900123", &uk()).unwrap();
        let b = normalize("+44 7700 900123", &uk()).unwrap();
        assert_eq!(key(&a), key(&b));
        assert_eq!(key(&b), b);
        assert_eq!(calling_code_len("1202"), 1);
        assert_eq!(calling_code_len("447700"), 2);
        assert_eq!(calling_code_len("3531"), 3);
        assert_eq!(calling_code_len(""), 3);
    }

    #[test]
    fn bad_prefixes_are_named_by_index() {
        let e = |list: &[&str]| PrefixSet::new(list).unwrap_err();
        assert_eq!(
            e(&["+882", "070"]),
            PrefixError {
                index: 1,
                error: PhoneError::NotInternational
            }
        );
        assert_eq!(e(&["+"]).error, PhoneError::Empty);
        assert_eq!(e(&["00"]).error, PhoneError::Empty);
        assert_eq!(e(&["+0"]).error, PhoneError::InvalidCountryCode);
        assert_eq!(e(&["+44a"]).error, PhoneError::InvalidCharacter { at: 3 });
        assert_eq!(e(&["+1234567890123456"]).error, PhoneError::TooLongDigits);
        assert_eq!(e(&["+1", "+４４"]).to_string(), "[1]: invalid character at byte 1 (only ASCII digits, one leading '+', space - . ( ) /)");
        // A one-digit prefix (a whole zone) is allowed.
        assert!(PrefixSet::new(["+7"]).is_ok());
    }

    #[test]
    fn hash_is_keyed_stable_hex() {
        let n = normalize("+447700900123", &uk()).unwrap();
        let same = normalize("07700 900123", &uk()).unwrap();
        let other = normalize("+447700900124", &uk()).unwrap();
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let h = hash(&k1, &n);
        assert_eq!(h.len(), 32);
        assert!(
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{h}"
        );
        assert_eq!(h, hash(&k1, &same));
        assert_ne!(h, hash(&k2, &n));
        assert_ne!(h, hash(&k1, &other));
        assert!(!h.contains("7700"));
    }

    #[test]
    fn hash_is_hmac_sha256_truncated() {
        // RFC 4231 test case 2 is HMAC-SHA256("Jefe", "what do ya want for
        // nothing?"); a number cannot hold that text, so check the
        // construction on a number against an independent HMAC built from
        // `sha2`: H((K^opad) || H((K^ipad) || m)).
        use sha2::{Digest, Sha256};
        let key = b"appguard-test-key-0123456789abcdef";
        let n = normalize("+14155552671", &PhoneRules::default()).unwrap();
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(n.as_str())
            .finalize();
        let outer = Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize();
        let expected: String = outer[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash(key, &n), expected);
        // And the HMAC itself against RFC 4231 test case 2.
        let mac = hmac_sha256::HMAC::mac(b"what do ya want for nothing?", b"Jefe");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A denied "prefix" that is a whole number (1 to
    /// 15 digits are allowed, so an operator may block one number) denies
    /// that number, in each spelling. The prefix search stopping one digit
    /// short of the number passed the whole suite.
    #[test]
    fn a_denied_prefix_as_long_as_the_number_denies_it() {
        let set = PrefixSet::new(["+44 7700 900123", "+882 1234 5678 9012"]).unwrap();
        let denied = |s: &str| set.contains_prefix_of(&normalize(s, &uk()).unwrap());
        assert!(denied("+44 7700 900123"));
        assert!(denied("07700 900123"));
        assert!(denied("+44 07700 900123"));
        assert!(denied("+882 1234 5678 9012"), "15 digits");
        assert!(!denied("+44 7700 900124"));
        assert_eq!(
            set.matching_prefix(&normalize("+44 7700 900123", &uk()).unwrap()),
            Some("+447700900123")
        );
    }
}
