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
	var spans [][2]int
	var fragments []string
	isURL := strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
	if isURL {
		spans, fragments = urlPasswordSpans(dsn)
	} else {
		spans = keyValuePasswordSpans(dsn)
		for _, sp := range spans {
			fragments = append(fragments, splitAtUnicodeSpace(dsn[sp[0]:sp[1]])...)
		}
	}
	if len(spans) == 0 {
		return r
	}
	for _, sp := range spans {
		r.addSecret(dsn[sp[0]:sp[1]])
	}
	for _, f := range fragments {
		r.addSecret(f)
	}
	r.masked = maskSpans(dsn, spans)
	if hash := strings.IndexByte(dsn, '#'); hash >= 0 && isURL {
		r.head = dsn[:hash]
		r.maskedHead = maskSpans(r.head, spans)
	}
	return r
}

// maskSpans replaces with redactMask each of spans, at least one, that
// starts within s, cut at its end: s may be the head of the string the
// spans were found in.
func maskSpans(s string, spans [][2]int) string {
	var b strings.Builder
	last := 0
	for _, sp := range mergeSpans(spans) {
		if sp[0] >= len(s) {
			break
		}
		b.WriteString(s[last:sp[0]])
		b.WriteString(redactMask)
		last = min(sp[1], len(s))
	}
	b.WriteString(s[last:])
	return b.String()
}

// mergeSpans sorts spans, at least one, and joins those that overlap or
// touch: a URL password is found both as url.Parse reads it and as its
// writer meant it, and the longer reading must be hidden whole.
func mergeSpans(spans [][2]int) [][2]int {
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b [2]int) int { return a[0] - b[0] })
	merged := [][2]int{spans[0]}
	for _, sp := range spans[1:] {
		if last := &merged[len(merged)-1]; sp[0] <= last[1] {
			last[1] = max(last[1], sp[1])
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
	var spans [][2]int
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
			spans = append(spans, [2]int{start, end})
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

// urlPasswordSpans returns where the passwords of a URL DSN are: in the
// userinfo (see userinfoPasswordSpans), and in any query parameter whose
// name ends in "password" (password, sslpassword). fragments are the parts
// of a userinfo password that url.Parse may quote on their own.
func urlPasswordSpans(dsn string) (spans [][2]int, fragments []string) {
	scheme := strings.Index(dsn, "://") + len("://")
	_, parseErr := url.Parse(dsn)
	userinfo, fragments := userinfoPasswordSpans(dsn[scheme:], parseErr != nil)
	for _, sp := range userinfo {
		spans = append(spans, [2]int{scheme + sp[0], scheme + sp[1]})
	}
	// The query as url.Parse finds it: after the first '?' before any '#'.
	rest, _, _ := strings.Cut(dsn[scheme:], "#")
	_, query, hasQuery := strings.Cut(rest, "?")
	if !hasQuery {
		return spans, fragments
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
	return spans, fragments
}

// userinfoPasswordSpans returns where the password is in s, a URL DSN
// after its "://", and the fragments of it that errors may quote alone.
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
func userinfoPasswordSpans(s string, parseFails bool) (spans [][2]int, fragments []string) {
	authEnd := strings.IndexAny(s, "/?#")
	if authEnd < 0 {
		authEnd = len(s)
	}
	authority := s[:authEnd]
	at := strings.LastIndexByte(authority, '@')
	var colon int
	if at >= 0 {
		colon = strings.IndexByte(authority[:at], ':')
	} else {
		colon = strings.IndexByte(authority, ':')
	}
	if colon < 0 {
		// A user without a password, or a host and port.
		return nil, nil
	}
	start := colon + 1
	if at >= 0 {
		spans = append(spans, [2]int{start, at})
	}
	end := strings.LastIndexByte(s, '@')
	if end < authEnd {
		return spans, nil
	}
	spans = append(spans, [2]int{start, end})
	password := s[start:end]
	for k, c := range []byte(password) {
		if (c == '/' || c == '?' || c == '#') && !isPort(password[:k]) {
			fragments = append(fragments, password[:k])
		}
	}
	host, _, _ := strings.Cut(authority[at+1:], ":")
	isDelimiter := func(r rune) bool { return strings.ContainsRune("/?#&=", r) }
	for _, piece := range strings.FieldsFunc(password, isDelimiter) {
		if len(piece) >= 4 && !isPort(piece) && piece != host {
			fragments = append(fragments, piece)
		}
	}
	// url.Parse quotes the port it rejects: what follows the last ':' (or
	// the ']' of an IPv6 literal) of the host it found.
	hostStart, hostEnd, portStart := at+1, authEnd, -1
	if strings.HasPrefix(authority[hostStart:], "[") {
		if i := strings.LastIndexByte(authority, ']'); i >= hostStart {
			hostStart, hostEnd, portStart = hostStart+1, i, i+1
			if strings.HasPrefix(authority[portStart:], ":") {
				portStart++
			}
		}
	} else if i := strings.LastIndexByte(authority, ':'); i >= hostStart {
		hostEnd, portStart = i, i+1
	}
	if portStart >= 0 {
		if port := s[max(portStart, start):authEnd]; !isPort(port) {
			fragments = append(fragments, port)
		}
	}
	if parseFails && max(hostStart, start) < hostEnd {
		fragments = append(fragments, s[max(hostStart, start):hostEnd])
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

// splitAtUnicodeSpace returns the parts of raw, a key=value value as
// jsonstream reads it, between spaces outside ASCII (U+00A0, U+2028, …)
// and '=', or nil if there is no such space. lib/pq ends a value at any
// Unicode space, so a password "my<U+00A0>secret" is "my" to it and
// "secret" the next key, which its "missing \"=\"" error quotes (as it
// quotes the value of a key such as sslmode).
func splitAtUnicodeSpace(raw string) []string {
	isWide := func(r rune) bool { return r >= utf8.RuneSelf && unicode.IsSpace(r) }
	if !strings.ContainsFunc(raw, isWide) {
		return nil
	}
	return strings.FieldsFunc(raw, func(r rune) bool { return isWide(r) || r == '=' })
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
