/**
 * Text from a client (a device, a jig, a USB stick): the one set of rules
 * every link and the station apply before a string is stored, hashed,
 * logged or shown. Shared vocabulary, like errors.ts.
 *
 * - Well-formed Unicode only: a lone surrogate is hashed as one string and
 *   stored by SQLite as another (U+FFFD), which would poison the ledger.
 * - No control characters (C0, DEL, C1): they are terminal escapes on the
 *   technician's screen and line breaks in logs. No invisible format
 *   characters (bidi controls, zero-width ones): they make two names look
 *   alike, or a name read backwards.
 * - A length cap per field.
 */
import { createRequire } from 'node:module';
import { LineSignerError } from './errors.js';

/** Caps, in characters (UTF-16 code units), per client field. */
export const TEXT_LIMITS = {
  hardwareId: 128,
  name: 128,
  workOrder: 64,
  override: 1024,
  overrideKey: 64,
  sotaConfigDir: 256,
  field: 1024,
} as const;

// C0 (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F).
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
// Invisible format characters (bidi overrides and isolates, zero-width ones, the BOM), everything else
// Unicode says renders as nothing where unsupported (Default_Ignorable_Code_Point: variation selectors,
// the combining grapheme joiner, Hangul fillers, Mongolian selectors, Khmer inherent vowels), the braille
// blank, and the line and paragraph separators: "dev1" and "dev1\u200b" look alike in the device cloud,
// and U+202E shows a file name on the stick reversed.
const INVISIBLE = /[\p{Cf}\p{Default_Ignorable_Code_Point}\u2028\u2029\u2800]/u;

/** Why `value` is not acceptable client text, or null when it is. */
export function textProblem(value: string, max: number): string | null {
  if (!value.isWellFormed()) return 'is not well-formed Unicode (a lone surrogate)';
  if (CONTROL.test(value)) return 'contains a control character';
  const invisible = INVISIBLE.exec(value);
  if (invisible) return `contains an invisible format character (U+${invisible[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')})`;
  // The cap counts UTF-16 code units, as every store and page downstream of it does; say so, since a character outside the BMP (an emoji, U+20000) counts two.
  if (value.length > max) return `is longer than ${max} UTF-16 code units (a character outside the Basic Multilingual Plane counts two)`;
  return null;
}

/** Throws BAD_FRAME naming the field when `value` is not acceptable client text. */
export function checkClientText(field: string, value: string, max: number = TEXT_LIMITS.field): string {
  const why = textProblem(value, max);
  if (why) throw new LineSignerError('BAD_FRAME', `${field} ${why}`);
  return value;
}

/**
 * Client text as it may appear inside a message, a log line or a terminal
 * row: quoted, every control character, backslash, quote, lone surrogate
 * and non-ASCII character escaped, and clipped. The result is printable
 * ASCII whatever the input was.
 */
export function quote(value: string, max = 80): string {
  let out = '';
  for (const ch of value.length > max ? value.slice(0, max) : value) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += '\\' + ch;
    else if (c >= 0x20 && c < 0x7f) out += ch;
    else if (c <= 0xffff) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += `\\u{${c.toString(16)}}`;
  }
  return `"${out}${value.length > max ? '...' : ''}"`;
}

/** The longest refusal message a link answers with or the ledger keeps: room for every message of ours, never a client's essay. */
export const MESSAGE_MAX = 1000;

/** A message clipped to MESSAGE_MAX characters, saying so. */
export function clipMessage(message: string): string {
  return message.length > MESSAGE_MAX ? `${message.slice(0, MESSAGE_MAX - 20)}... (clipped)` : message;
}

/** Any text made safe for one terminal row or log line: printable ASCII, escapes for the rest. */
export function printable(value: string): string {
  return quote(value, Number.MAX_SAFE_INTEGER).slice(1, -1).replace(/\\"/g, '"').replace(/\\\\/g, '\\');
}

/**
 * A device's name is text, and also a path segment of the device API
 * (`/ota/devices/<name>/`): "." and ".." would be resolved away, so they
 * are refused with the other text rules. Why `value` cannot be a device's
 * name, or null.
 */
export function deviceNameProblem(value: string): string | null {
  const text = textProblem(value, TEXT_LIMITS.name);
  if (text) return text;
  // One name must not be writable two ways that look the same in the device cloud: NFC, the form
  // text input makes, and nothing else (e + U+0301 for é, the Kelvin sign for K, U+F900 for 豈).
  if (value.normalize('NFC') !== value) return `${quote(value)} is not in Unicode NFC form: the same text can be written another way`;
  // A pile of combining marks draws over its neighbours (no script needs more than four in a row).
  if (/\p{M}{5}/u.test(value)) return `${quote(value)} stacks more than four combining marks on one character`;
  // Private-use, unassigned and noncharacter code points have no glyph a device cloud's font draws: all look alike (a box).
  const unknown = /[\p{Co}\p{Cn}]/u.exec(value);
  if (unknown) return `${quote(value)} has a character with no glyph (U+${unknown[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}: private use or unassigned)`;
  // i and j lose their own dot under a mark above: i + U+0307 draws as i.
  if (/\p{Soft_Dotted}\u0307/u.test(value)) return `${quote(value)} puts a dot above a letter that has one (it draws as the letter alone)`;
  // A web page shows a run of spaces as one.
  if (/\s{2}/u.test(value)) return `${quote(value)} has spaces in a row (a web page shows them as one)`;
  if (/^\s|\s$/u.test(value)) return `${quote(value)} begins or ends with a space`;
  // Spaces that look like U+0020 (the ideographic space of CJK input stays a space of its own).
  const space = /[\u00a0\u1680\u2000-\u200a\u202f\u205f]/u.exec(value);
  if (space) return `${quote(value)} has a space other than U+0020 (U+${space[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')})`;
  if (/^(?:\.|%2e){1,2}$/i.test(value)) return `${quote(value)} cannot be a device name: it is a path segment of the device API`;
  const lookAlike = lookAlikeProblem(value);
  return lookAlike ? `${quote(value)} ${lookAlike}` : null;
}

/** Throws BAD_FRAME naming the field when `value` cannot be a device's name. */
export function checkDeviceName(field: string, value: string): string {
  const why = deviceNameProblem(value);
  if (why) throw new LineSignerError('BAD_FRAME', `${field} ${why}`);
  return value;
}

/**
 * What a name looks like, for telling two names apart (Unicode TS #39's
 * skeleton, with compatibility forms folded as well): two names with one
 * skeleton pass for each other in the device cloud ("Завод-З" with a
 * Cyrillic Ze and "Завод-3", "dev-m" and "dev-rn"), so the ledger keeps
 * one name per skeleton.
 */
export function nameSkeleton(name: string): string {
  // ASCII stays as it is: a factory's own scheme (SN-00000I and SN-000001, base36 counters) is not an
  // attack, and folding 0/O, 1/l/I and rn/m refused every 18th uppercase base36 serial. What a device
  // could slip in is the rest: another script's or a compatibility form's look-alike of ASCII.
  let out = '';
  for (const ch of name.normalize('NFKD')) out += ch.charCodeAt(0) < 0x80 ? ch : (CONFUSABLES.get(ch) ?? ch);
  return out.normalize('NFD');
}

/** Why a name is refused: another device has it, or one that looks the same. */
export function nameTakenMessage(name: string, holderId: string, holderName: string): string {
  return holderName === name || holderId === name
    ? `name ${quote(name)} is device ${holderId}'s already; a name is one device's in the device cloud`
    : `name ${quote(name)} looks the same as ${quote(holderName)}, device ${holderId}'s name; a name is one device's in the device cloud`;
}

/**
 * Unicode's confusables (unhomoglyph's copy of confusables.txt: one code
 * point to what it looks like), looked up one character at a time. The
 * package's own function is one regular expression of 6,311 alternatives,
 * whose compilation (and V8's later tier-up of it) held the links' thread
 * 20–40 ms at a request of its choosing.
 */
const CONFUSABLES = new Map(Object.entries(createRequire(import.meta.url)('unhomoglyph/data.json') as Record<string, string>));

/** `text` with each character that has a look-alike prototype replaced by it. */
function unconfuse(text: string): string {
  let out = '';
  for (const ch of text) out += CONFUSABLES.get(ch) ?? ch;
  return out;
}

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;
const SPACE = /^\p{Zs}$/u;
// The letters of the languages written in Latin script: Latin-1, Extended-A and -B (less the click
// letters ǀ ǁ ǂ ǃ, which are drawn as | and !) and the Vietnamese block. IPA and other phonetic
// letters (ɡ, ɑ, ɪ) are not a factory's alphabet and are looked at like any other script's.
const OWN_LATIN = /^[\u00c0-\u01bf\u01c4-\u024f\u1e00-\u1eff]$/u;
// Superscripts, subscripts, fractions and the ordinal indicators: a reader sees their size (m², ½, Nº).
const SIZED_APART = /^[\p{No}\u00aa\u00ba]$/u;
const LATIN_LETTER = /[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01bf\u01c4-\u024f\u1e00-\u1eff]/u;

/**
 * The ASCII a character passes for, or null: its compatibility form
 * (fullwidth letters, digits and punctuation, ligatures) with Unicode's
 * confusables (unhomoglyph's table of confusables.txt) replaced. A Latin
 * letter of a language (ı, æ, ä) is not a disguise; spaces are judged
 * above.
 */
function asciiDisguise(ch: string): string | null {
  if (OWN_LATIN.test(ch) && ch.normalize('NFKC') === ch) return null;
  const compatibility = ch.normalize('NFKD');
  // A compatibility form of ASCII (fullwidth ％) reads as that ASCII, whatever the confusables table says of the ASCII.
  if (compatibility !== ch && PRINTABLE_ASCII.test(compatibility)) return compatibility;
  const reads = unconfuse(compatibility).normalize('NFD');
  return PRINTABLE_ASCII.test(reads) ? reads : null;
}

/**
 * Why a device name could pass for another, ASCII-looking one in the
 * device cloud, or null. Two cross-script cases (Unicode TS #39's mixed-
 * and whole-script confusables, narrowed to ASCII, which is what device
 * names on a line are): a character that only looks like ASCII beside
 * ASCII letters ("dev" with a Cyrillic "е", "Line７", "ﬁlter", "dev‐9"
 * with U+2010), and a name made only of such characters, ASCII and
 * spaces ("Кос" for "Koc", "АВ-12"). Names in one other script ("ライン　
 * ７", "Жавод-7") and Latin names with their own letters ("Sæby",
 * "Kırıkkale", "m²", "Nº7") pass.
 */
export function lookAlikeProblem(value: string): string | null {
  if (PRINTABLE_ASCII.test(value)) return null;
  // Latin letters, not digits: digits are every script's, and "Жавод-7" is one Cyrillic name; but a
  // Greek ΤΕΑΜ beside an Ö passes for TEAM-Ö as much as beside an O.
  const besideAscii = LATIN_LETTER.test(value);
  let first: { ch: string; reads: string } | null = null;
  let allDisguised = true;
  for (const ch of value) {
    // Spaces, and marks of size that read as themselves (², ½), count for neither side.
    if (ch.charCodeAt(0) < 0x80 || SPACE.test(ch) || SIZED_APART.test(ch)) continue;
    const reads = asciiDisguise(ch);
    if (reads === null) {
      allDisguised = false;
      continue;
    }
    first ??= { ch, reads };
    if (besideAscii) break;
  }
  if (!first || (!besideAscii && !allDisguised)) return null;
  const which = `U+${first.ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}, which looks like ${quote(first.reads)}`;
  return besideAscii
    ? `mixes ASCII letters with a character that only looks like ASCII (${which}): one name must not pass for another`
    : `reads as ASCII but is not (${which}): one name must not pass for another`;
}
