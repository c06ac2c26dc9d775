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
	// head and maskedHead are the same for what url.Parse's error quotes
	// of a URL DSN: the part before its first '#'.
	head, maskedHead string
	// secrets are the passwords of dsn, as written and as decoded, and the
	// fragments of them that an error may quote alone.
	secrets []string
}

// newRedactor finds the passwords in dsn, a lib/pq DSN in URL or
// key=value form; any other DSN yields none, and only the patterns of
// redactText apply to its errors.
func newRedactor(dsn string) *redactor {
	r := &redactor{dsn: dsn, masked: dsn}
	var spans []span
	var fragments []string
	fragment := noSpan
	if isURLDSN(dsn) {
		u := cutURL(dsn)
		spans, fragments = urlPasswordSpans(dsn, u)
		fragment = u.fragment
	} else {
		spans = keyValuePasswordSpans(dsn)
		for _, sp := range spans {
			fragments = append(fragments, splitAtUnicodeSpace(sp.in(dsn))...)
		}
	}
	if len(spans) == 0 {
		return r
	}
	for _, sp := range spans {
		r.addSecret(sp.in(dsn))
	}
	for _, f := range fragments {
		r.addSecret(f)
	}
	r.masked = maskSpans(dsn, spans)
	if fragment.ok() {
		r.head = dsn[:fragment.start-1] // before the '#'
		r.maskedHead = maskSpans(r.head, spans)
	}
	return r
}

// maskSpans replaces with redactMask each of spans, at least one, that
// starts within s, cut at its end: s may be the head of the string the
// spans were found in.
func maskSpans(s string, spans []span) string {
	var b strings.Builder
	last := 0
	for _, sp := range mergeSpans(spans) {
		if sp.start >= len(s) {
			break
		}
		b.WriteString(s[last:sp.start])
		b.WriteString(redactMask)
		last = min(sp.end, len(s))
	}
	b.WriteString(s[last:])
	return b.String()
}

// mergeSpans sorts spans, at least one, and joins those that overlap or
// touch: a URL password is found both as url.Parse reads it and as its
// writer meant it, and the longer reading must be hidden whole.
func mergeSpans(spans []span) []span {
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b span) int { return a.start - b.start })
	merged := []span{spans[0]}
	for _, sp := range spans[1:] {
		if last := &merged[len(merged)-1]; sp.start <= last.end {
			last.end = max(last.end, sp.end)
		} else {
			merged = append(merged, sp)
		}
	}
	return merged
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
	// lib/pq reads a key=value string as runes: each invalid byte becomes
	// U+FFFD in what it quotes.
	for _, f := range slices.Clone(forms) {
		if !utf8.ValidString(f) {
			forms = append(forms, string([]rune(f)))
		}
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
// DSN or its head (plainly or quoted, as url.Parse's error does) by its
// masked copy;
// elsewhere by the password's known forms; then by redactText's patterns.
func (r *redactor) redactString(s string) string {
	for _, dsn := range [][2]string{{r.dsn, r.masked}, {r.head, r.maskedHead}} {
		if dsn[0] != dsn[1] {
			quoted, maskedQuoted := strconv.Quote(dsn[0]), strconv.Quote(dsn[1])
			s = strings.ReplaceAll(s, quoted[1:len(quoted)-1], maskedQuoted[1:len(maskedQuoted)-1])
			s = strings.ReplaceAll(s, dsn[0], dsn[1])
		}
	}
	s = maskSecrets(s, r.secrets)
	s, found := redactText(s)
	return maskEscapeError(s, append(found, r.secrets...))
}

// escapeErrorPrefix starts the message of a url.EscapeError, which quotes
// up to three bytes where unescaping failed: part of a password when it
// failed there.
const escapeErrorPrefix = `invalid URL escape "`

// maskEscapeError masks the bytes that a url.EscapeError in s quotes when
// they are part of one of secrets: too short to be masked as a secret of
// their own, they would still give away a piece of the password.
func maskEscapeError(s string, secrets []string) string {
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
		for _, secret := range secrets {
			if strings.Contains(secret, unq) {
				return s[:start] + redactMask + s[start+end:]
			}
		}
	}
	return s
}

// maskSecrets replaces every occurrence of each of secrets in s. The
// occurrences are found in s as it is and masked together, since secrets
// overlap (a URL password read two ways, and its query parameter): masking
// one first could break another and leave its rest in view. A secret of
// three bytes or fewer is masked only where it is not part of a longer
// word, so that a password such as "ab" does not turn every "about" in the
// message into noise.
func maskSecrets(s string, secrets []string) string {
	var spans []span
	for _, secret := range secrets {
		for from := 0; ; {
			i := strings.Index(s[from:], secret)
			if i < 0 {
				break
			}
			start, end := from+i, from+i+len(secret)
			from = start + 1
			if len(secret) <= 3 {
				before, _ := utf8.DecodeLastRuneInString(s[:start])
				after, _ := utf8.DecodeRuneInString(s[end:])
				if isWordRune(before) || isWordRune(after) {
					continue
				}
			}
			spans = append(spans, span{start, end})
		}
	}
	if len(spans) == 0 {
		return s
	}
	return maskSpans(s, spans)
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// Patterns of a password in text whose DSN is unknown (a connector the
// caller built): the userinfo of a postgres URL and a password or
// sslpassword parameter in key=value or query form. The text may show a
// value as written (backslash escapes, a quote inside an unquoted value)
// or quoted again by %q (each backslash doubled), so a run of backslashes
// escapes the character after it: masking too much beats showing the rest
// of a password.
var (
	urlPasswordPattern      = regexp.MustCompile(`(?i)(postgres(?:ql)?://[^:/?#\s"]*:)(?:\\.|[^\s"\\])*(@)`)
	keyValuePasswordPattern = regexp.MustCompile(`(?i)(\b\w*password\s*=\s*)(?:'(?:[^'\\]|\\+.)*(?:'|$)|(?:\\+.|[^\s&"\\])+\\*|\\+)`)
)

// redactText masks what looks like a password in s, and returns what it
// masked, so that a url.EscapeError quoting part of it is masked too.
func redactText(s string) (string, []string) {
	var found []string
	mask := func(pattern *regexp.Regexp, s string) string {
		var b strings.Builder
		last := 0
		for _, m := range pattern.FindAllStringSubmatchIndex(s, -1) {
			// The password runs from the end of the first group to the
			// end of the match, or to the second group (the '@') if any.
			start, end := m[3], m[1]
			if len(m) > 4 {
				end = m[4]
			}
			found = append(found, s[start:end])
			b.WriteString(s[last:start])
			b.WriteString(redactMask)
			last = end
		}
		b.WriteString(s[last:])
		return b.String()
	}
	return mask(keyValuePasswordPattern, mask(urlPasswordPattern, s)), found
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

// urlPasswordSpans returns where the passwords of u, dsn cut by cutURL,
// are: in the userinfo (see userinfoPasswordSpans), and in any query
// parameter whose name ends in "password" (password, sslpassword).
// fragments are the parts of a userinfo password that url.Parse may quote
// on their own.
func urlPasswordSpans(dsn string, u urlDSN) (spans []span, fragments []string) {
	_, parseErr := url.Parse(dsn)
	spans, fragments = userinfoPasswordSpans(dsn, u, parseErr != nil)
	if !u.query.ok() {
		return spans, fragments
	}
	for s := newQueryScanner(dsn, u.query); ; {
		p, more := s.next()
		if !more {
			break
		}
		name := p.name.in(dsn)
		if decoded, err := url.QueryUnescape(name); err == nil {
			name = decoded
		}
		if p.value.ok() && p.value.start < p.value.end && strings.HasSuffix(strings.ToLower(name), "password") {
			spans = append(spans, p.value)
		}
	}
	return spans, fragments
}

// userinfoPasswordSpans returns where the password of u, dsn cut by
// cutURL, is, and the fragments of it that errors may quote alone.
// url.Parse ends the authority at the first '/', '?' or '#', so a password
// holding one is cut there: the part before becomes the port (quoted by
// "invalid port", or as the URL when a '#' cut it), the rest path, query
// or fragment, whose values lib/pq may quote ("wrong value for
// \"sslmode\""). Whoever wrote the DSN meant the password to run to the
// last '@'; both readings are returned, url.Parse's first.
//
// "postgres://host:5432/db?application_name=me@laptop" has the same shape,
// so a valid port and the host (else the user, no secret) are never
// fragments, nor is a piece shorter than four bytes after the delimiter;
// unless url.Parse fails (parseFails), when its error is the only one and
// quotes the host it rejects ("invalid host: ParseAddr(…)").
func userinfoPasswordSpans(dsn string, u urlDSN, parseFails bool) (spans []span, fragments []string) {
	if u.password.ok() {
		spans = append(spans, u.password)
	}
	if !u.meantPassword.ok() {
		return spans, nil
	}
	spans = append(spans, u.meantPassword)
	start := u.meantPassword.start
	password := u.meantPassword.in(dsn)
	for k, c := range []byte(password) {
		if (c == '/' || c == '?' || c == '#') && !isPort(password[:k]) {
			fragments = append(fragments, password[:k])
		}
	}
	host, _, _ := strings.Cut(u.hostPort.in(dsn), ":")
	isDelimiter := func(r rune) bool { return strings.ContainsRune("/?#&=", r) }
	for _, piece := range strings.FieldsFunc(password, isDelimiter) {
		if len(piece) >= 4 && !isPort(piece) && piece != host {
			fragments = append(fragments, piece)
		}
	}
	// url.Parse quotes the port it rejects, and the host it rejects when
	// it fails; either may start inside the password.
	if u.port.ok() {
		if port := dsn[max(u.port.start, start):u.port.end]; !isPort(port) {
			fragments = append(fragments, port)
		}
	}
	if hostStart := max(u.host.start, start); parseFails && hostStart < u.host.end {
		fragments = append(fragments, dsn[hostStart:u.host.end])
	}
	return spans, fragments
}

// isPort reports whether s is empty or a port both url.Parse and lib/pq
// accept: such a part of a password is used as the port, not quoted.
func isPort(s string) bool {
	if s == "" {
		return true
	}
	_, err := strconv.ParseUint(s, 10, 16)
	return err == nil
}

// keyValuePasswordSpans returns where the values of the parameters whose
// name ends in "password" are in a key=value DSN, as kvScanner reads it: a
// quoted value's span keeps its quotes out.
func keyValuePasswordSpans(dsn string) []span {
	var spans []span
	for s := (kvScanner{dsn: dsn}); ; {
		p, more := s.next()
		if !more {
			return spans
		}
		if p.value.start < p.value.end && strings.HasSuffix(strings.ToLower(p.key.in(dsn)), "password") {
			spans = append(spans, p.value)
		}
	}
}
