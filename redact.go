package jsonstream

import (
	"errors"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/lib/pq"
)

// redactMask replaces a password, as url.URL.Redacted does.
const redactMask = "xxxxx"

// redactor removes the passwords of one DSN from errors. lib/pq puts a
// malformed URL DSN, password included, into the error of the first query
// (Go's url.Parse quotes its input); jsonstream passes no error on with a
// password in it.
type redactor struct {
	// dsn is the DSN as the inner driver got it; masked is the same with
	// every password replaced by redactMask.
	dsn, masked string
	// secrets are the passwords of dsn, as written and as decoded, longest
	// first so that a password containing another is masked whole.
	secrets []string
}

// newRedactor finds the passwords in dsn, a lib/pq DSN in URL or
// key=value form; any other DSN yields none, and only the patterns of
// redactText apply to its errors.
func newRedactor(dsn string) *redactor {
	r := &redactor{dsn: dsn, masked: dsn}
	var spans [][2]int
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		spans = urlPasswordSpans(dsn)
	} else {
		spans = keyValuePasswordSpans(dsn)
	}
	if len(spans) == 0 {
		return r
	}
	var masked strings.Builder
	last := 0
	for _, sp := range spans {
		raw := dsn[sp[0]:sp[1]]
		r.addSecret(raw)
		masked.WriteString(dsn[last:sp[0]])
		masked.WriteString(redactMask)
		last = sp[1]
	}
	masked.WriteString(dsn[last:])
	r.masked = masked.String()
	slices.SortFunc(r.secrets, func(a, b string) int { return len(b) - len(a) })
	return r
}

// addSecret records raw, a password as written in the DSN, with every
// form an error message may show it in: decoded as the URL or key=value
// syntax decodes it, and escaped again as lib/pq, net/url and %q do.
func (r *redactor) addSecret(raw string) {
	forms := []string{raw, unquoteKeyValue(raw)}
	if s, err := url.PathUnescape(raw); err == nil {
		forms = append(forms, s)
	}
	if s, err := url.QueryUnescape(raw); err == nil {
		forms = append(forms, s)
	}
	escaper := strings.NewReplacer(`'`, `\'`, `\`, `\\`)
	for _, f := range slices.Clone(forms) {
		quoted := strconv.Quote(f)
		forms = append(forms, quoted[1:len(quoted)-1], escaper.Replace(f), url.QueryEscape(f), url.PathEscape(f))
	}
	for _, f := range forms {
		if f != "" && !slices.Contains(r.secrets, f) {
			r.secrets = append(r.secrets, f)
		}
	}
}

// redact returns err without the DSN's passwords. An error that carries
// none is returned as it is, so a *pq.Error (or anything else) passes
// through unchanged; otherwise the result says the same with every
// password masked, and errors.Is still sees what err wraps.
func (r *redactor) redact(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*pq.Error); ok { //nolint:errorlint // only the bare *pq.Error that drop-in code asserts
		// The server's own report never echoes the DSN.
		return err
	}
	msg := err.Error()
	out := r.redactString(msg)
	if out == msg {
		return err
	}
	return &redactedError{msg: out, err: err}
}

// redactString masks the DSN's passwords in s: where s shows the whole
// DSN (plainly or quoted, as url.Parse's error does) by its masked copy;
// elsewhere by the password's known forms; then by redactText's patterns.
func (r *redactor) redactString(s string) string {
	if r.masked != r.dsn {
		quoted, maskedQuoted := strconv.Quote(r.dsn), strconv.Quote(r.masked)
		s = strings.ReplaceAll(s, quoted[1:len(quoted)-1], maskedQuoted[1:len(maskedQuoted)-1])
		s = strings.ReplaceAll(s, r.dsn, r.masked)
	}
	for _, secret := range r.secrets {
		s = maskSecret(s, secret)
	}
	s = r.maskEscapeError(s)
	return redactText(s)
}

// escapeErrorPrefix starts the message of a url.EscapeError, which quotes
// up to three bytes where unescaping failed: part of a password when it
// failed there.
const escapeErrorPrefix = `invalid URL escape "`

func (r *redactor) maskEscapeError(s string) string {
	i := strings.Index(s, escapeErrorPrefix)
	if i < 0 {
		return s
	}
	start := i + len(escapeErrorPrefix)
	end := strings.IndexByte(s[start:], '"')
	if end <= 0 {
		return s
	}
	quoted := s[start : start+end]
	if unq, err := strconv.Unquote(`"` + quoted + `"`); err == nil {
		for _, secret := range r.secrets {
			if strings.Contains(secret, unq) {
				return s[:start] + redactMask + s[start+end:]
			}
		}
	}
	return s
}

// maskSecret replaces secret in s. A secret of three bytes or fewer is
// masked only where it is not part of a longer word, so that a password
// such as "ab" does not turn every "about" in the message into noise.
func maskSecret(s, secret string) string {
	if len(secret) > 3 {
		return strings.ReplaceAll(s, secret, redactMask)
	}
	var b strings.Builder
	for {
		i := strings.Index(s, secret)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(secret)
		before, _ := utf8.DecodeLastRuneInString(s[:i])
		after, _ := utf8.DecodeRuneInString(s[end:])
		b.WriteString(s[:i])
		if isWordRune(before) && isWordRune(after) {
			b.WriteString(secret)
		} else {
			b.WriteString(redactMask)
		}
		s = s[end:]
	}
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// Patterns of a password in text whose DSN is unknown (a connector the
// caller built): the userinfo of a postgres URL and a password or
// sslpassword parameter in key=value or query form.
var (
	urlPasswordPattern      = regexp.MustCompile(`(?i)(postgres(?:ql)?://[^:/?#@\s"]*:)[^\s"]*(@)`)
	keyValuePasswordPattern = regexp.MustCompile(`(?i)(\b\w*password\s*=\s*)(?:'(?:[^'\\]|\\.)*(?:'|$)|[^\s&'"]+)`)
)

// redactText masks what looks like a password in s.
func redactText(s string) string {
	s = urlPasswordPattern.ReplaceAllString(s, "${1}"+redactMask+"${2}")
	return keyValuePasswordPattern.ReplaceAllString(s, "${1}"+redactMask)
}

// redactedError is an error whose message had a password masked. It does
// not unwrap to the original error, whose message (or a field, such as
// url.Error.URL) still holds the password; errors.Is looks through it.
type redactedError struct {
	msg string
	err error
}

// Error implements error.
func (e *redactedError) Error() string { return e.msg }

// Is reports whether the original error is target, which reveals nothing
// of its message.
func (e *redactedError) Is(target error) bool { return errors.Is(e.err, target) }

// urlPasswordSpans returns where the passwords of a URL DSN are: in the
// userinfo as url.Parse finds it (between the first ':' and the last '@'
// of the authority), and in any query parameter whose name ends in
// "password" (password, sslpassword).
func urlPasswordSpans(dsn string) [][2]int {
	var spans [][2]int
	scheme := strings.Index(dsn, "://") + len("://")
	rest, _, _ := strings.Cut(dsn[scheme:], "#")
	authority, query, hasQuery := strings.Cut(rest, "?")
	if i := strings.IndexByte(authority, '/'); i >= 0 {
		authority = authority[:i]
	}
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		if colon := strings.IndexByte(authority[:at], ':'); colon >= 0 {
			spans = append(spans, [2]int{scheme + colon + 1, scheme + at})
		}
	}
	if !hasQuery {
		return spans
	}
	offset := scheme + len(rest) - len(query)
	for _, part := range strings.Split(query, "&") {
		name, value, ok := strings.Cut(part, "=")
		if decoded, err := url.QueryUnescape(name); err == nil {
			name = decoded
		}
		if ok && value != "" && strings.HasSuffix(strings.ToLower(name), "password") {
			start := offset + len(part) - len(value)
			spans = append(spans, [2]int{start, start + len(value)})
		}
		offset += len(part) + 1
	}
	return spans
}

// keyValuePasswordSpans returns where the values of the parameters whose
// name ends in "password" are in a key=value DSN, walked with lib/pq's
// rules (quoted values, backslash escapes). A quoted value's span keeps
// its quotes out.
func keyValuePasswordSpans(dsn string) [][2]int {
	var spans [][2]int
	i, n := 0, len(dsn)
	for i < n {
		for i < n && isSpace(dsn[i]) {
			i++
		}
		keyStart := i
		for i < n && dsn[i] != '=' && !isSpace(dsn[i]) {
			i++
		}
		key := dsn[keyStart:i]
		for i < n && isSpace(dsn[i]) {
			i++
		}
		if i == n || dsn[i] != '=' {
			return spans
		}
		i++
		for i < n && isSpace(dsn[i]) {
			i++
		}
		start := i
		var end int
		if i < n && dsn[i] == '\'' {
			start++
			i++
			for i < n && dsn[i] != '\'' {
				if dsn[i] == '\\' {
					i++
				}
				i++
			}
			end = min(i, n)
			i = min(i+1, n)
		} else {
			for i < n && !isSpace(dsn[i]) {
				if dsn[i] == '\\' {
					i++
				}
				i++
			}
			i = min(i, n)
			end = i
		}
		if end > start && strings.HasSuffix(strings.ToLower(key), "password") {
			spans = append(spans, [2]int{start, end})
		}
	}
	return spans
}

// unquoteKeyValue decodes the backslash escapes of a key=value value.
func unquoteKeyValue(raw string) string {
	if !strings.Contains(raw, `\`) {
		return raw
	}
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		if raw[i] == '\\' && i+1 < len(raw) {
			i++
		}
		b.WriteByte(raw[i])
	}
	return b.String()
}
