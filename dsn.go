package jsonstream

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The DSN lexer: where the parts of a lib/pq DSN are, by byte offsets, so
// that jsonstream's parameters can be cut out (splitDSN) and passwords
// masked (newRedactor) without the DSN being read twice, or two ways.

// span is where a part of a DSN is: its bytes from start up to end. A part
// that is not there is noSpan.
type span struct{ start, end int }

// noSpan stands for a part the DSN does not have.
var noSpan = span{-1, -1}

// ok reports whether the part is there; it may still be empty.
func (sp span) ok() bool { return sp.start >= 0 }

// in returns the bytes of s that sp covers; s is the DSN sp was found in.
func (sp span) in(s string) string { return s[sp.start:sp.end] }

// isURLDSN reports whether dsn is in URL form, which lib/pq hands to
// url.Parse; any other DSN it reads as key=value pairs.
func isURLDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// kvParam is one parameter of a key=value DSN.
type kvParam struct {
	// key is the key as written; lib/pq reads no escapes in it.
	key span
	// value is the value as written, inside the quotes of a quoted one,
	// its backslash escapes not decoded (unquoteKeyValue does). A value
	// that runs to the end of the DSN unterminated ends there.
	value span
	// end is just past the parameter: after a quoted value's closing
	// quote, or at the end of the DSN when err is set.
	end int
	// err says why the parameter is malformed, wrapping ErrInvalidOption;
	// no parameter follows one that has it. lib/pq rejects the DSN then;
	// only jsonstream's own parameters are jsonstream's to reject.
	err error
}

// kvScanner walks a key=value DSN as lib/pq's parser (fromDSN) does:
// spaces around '=', values single-quoted or not, a backslash escaping
// the byte after it, inside quotes or out. It keeps a backslash that ends
// the DSN as it is.
//
// With pqSpaces set, every Unicode space ends a key or a value, as in
// lib/pq: that is how jsonstream finds its own parameters. Without it only
// ASCII spaces do, which reads a value as its writer most likely meant it:
// the redactor masks a password with a no-break space in it whole (and
// its pieces, splitAtUnicodeSpace), where lib/pq would read the rest as
// another key and quote it in an error.
type kvScanner struct {
	dsn      string
	pqSpaces bool
	pos      int // where the next parameter, or the spaces before it, starts
}

// next returns the next parameter, or false when only spaces are left.
func (s *kvScanner) next() (kvParam, bool) {
	dsn, n := s.dsn, len(s.dsn)
	i := s.skipSpaces(s.pos)
	if i == n {
		s.pos = n
		return kvParam{}, false
	}
	var p kvParam
	p.key.start = i
	for i < n && dsn[i] != '=' && s.spaceAt(i) == 0 {
		i++
	}
	p.key.end = i
	i = s.skipSpaces(i)
	if i == n || dsn[i] != '=' {
		p.value = span{p.key.end, p.key.end}
		p.end, s.pos = n, n
		p.err = fmt.Errorf("%w: DSN parameter %s has no value", ErrInvalidOption, p.key.in(dsn))
		return p, true
	}
	i = s.skipSpaces(i + 1) // '='
	if i < n && dsn[i] == '\'' {
		i++
		p.value.start = i
		for i < n && dsn[i] != '\'' {
			if dsn[i] == '\\' {
				i++
			}
			i++
		}
		if i >= n {
			p.value.end, p.end = n, n
			p.err = fmt.Errorf("%w: DSN parameter %s: unterminated quoted value", ErrInvalidOption, p.key.in(dsn))
		} else {
			p.value.end, p.end = i, i+1
		}
	} else {
		p.value.start = i
		for i < n && s.spaceAt(i) == 0 {
			if dsn[i] == '\\' {
				i++
			}
			i++
		}
		p.value.end = min(i, n)
		p.end = p.value.end
	}
	s.pos = p.end
	return p, true
}

// skipSpaces returns the index of the first byte of the DSN at or after i
// that is not a space, or its length.
func (s *kvScanner) skipSpaces(i int) int {
	for i < len(s.dsn) {
		w := s.spaceAt(i)
		if w == 0 {
			break
		}
		i += w
	}
	return i
}

// spaceAt returns the length of the space that starts at byte i of the
// DSN, or 0 when none does: an ASCII space, or with pqSpaces any rune
// unicode.IsSpace reports, as lib/pq reads a key=value DSN (U+00A0 and
// U+0085 end a key or a value as ' ' does).
func (s *kvScanner) spaceAt(i int) int {
	if c := s.dsn[i]; c < utf8.RuneSelf || !s.pqSpaces {
		if isSpace(c) {
			return 1
		}
		return 0
	}
	if r, w := utf8.DecodeRuneInString(s.dsn[i:]); unicode.IsSpace(r) {
		return w
	}
	return 0
}

// isSpace reports whether c is an ASCII space, which ends a key or an
// unquoted value.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// unquoteKeyValue decodes the backslash escapes of raw, a key=value value
// as written (kvParam.value). A backslash that ends raw stays.
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

// splitAtUnicodeSpace returns the parts of raw, a key=value value as
// kvScanner reads it, between spaces outside ASCII (U+00A0, U+2028, …)
// and '=', or nil if there is no such space. lib/pq ends a value at any
// Unicode space, so a value "my<U+00A0>secret" is "my" to it and "secret"
// the next key, which its "missing \"=\"" error quotes (as it quotes the
// value of a key such as sslmode).
func splitAtUnicodeSpace(raw string) []string {
	isWide := func(r rune) bool { return r >= utf8.RuneSelf && unicode.IsSpace(r) }
	if !strings.ContainsFunc(raw, isWide) {
		return nil
	}
	return strings.FieldsFunc(raw, func(r rune) bool { return isWide(r) || r == '=' })
}

// urlDSN is a URL DSN cut into its parts where url.Parse cuts it, by byte
// offsets into the DSN, escapes not decoded. It also holds the password
// as its writer meant it, which url.Parse cuts short when it holds an
// unescaped '/', '?' or '#'.
type urlDSN struct {
	// authority runs from after "://" to the first '/', '?' or '#'.
	authority span
	// hostPort is the authority after its last '@', or all of it.
	hostPort span
	// host is hostPort up to the port, inside the brackets of an IPv6
	// literal; port is what follows the host's ':' (noSpan if none).
	host, port span
	// password runs from after the first ':' of the userinfo (the
	// authority up to its last '@') to that '@'; noSpan without both.
	password span
	// meantPassword runs from the same ':' to the DSN's last '@', when
	// that '@' is past the authority: the writer of
	// "postgres://u:pa/ss@host/db" meant the password "pa/ss". Without
	// an '@' in the authority, the ':' is the authority's first. noSpan
	// if there is no such '@' or ':'.
	meantPassword span
	// path runs from the '/' that ends the authority to the query or
	// fragment; query from after the first '?' before the first '#' to
	// that '#'; fragment from after the first '#' to the end. Each is
	// noSpan if the DSN has none.
	path, query, fragment span
}

// cutURL cuts dsn, a DSN in URL form (isURLDSN), into its parts.
func cutURL(dsn string) urlDSN {
	u := urlDSN{port: noSpan, password: noSpan, meantPassword: noSpan, path: noSpan, query: noSpan, fragment: noSpan}
	scheme := strings.Index(dsn, "://") + len("://")
	beforeFragment := len(dsn)
	if hash := strings.IndexByte(dsn, '#'); hash >= 0 {
		beforeFragment = hash
		u.fragment = span{hash + 1, len(dsn)}
	}
	u.query = cutQuery(dsn[:beforeFragment], scheme)
	authEnd := len(dsn)
	if i := strings.IndexAny(dsn[scheme:], "/?#"); i >= 0 {
		authEnd = scheme + i
	}
	u.authority = span{scheme, authEnd}
	if authEnd < len(dsn) && dsn[authEnd] == '/' {
		u.path = span{authEnd, beforeFragment}
		if u.query.ok() {
			u.path.end = u.query.start - 1
		}
	}

	authority := u.authority.in(dsn)
	at := strings.LastIndexByte(authority, '@')
	// The ':' a password follows: the userinfo's first, or without an
	// '@' the authority's, in case a '/', '?' or '#' ended it early.
	userinfo := authority
	if at >= 0 {
		userinfo = authority[:at]
	}
	if colon := strings.IndexByte(userinfo, ':'); colon >= 0 {
		if at >= 0 {
			u.password = span{scheme + colon + 1, scheme + at}
		}
		if lastAt := strings.LastIndexByte(dsn, '@'); lastAt > authEnd {
			u.meantPassword = span{scheme + colon + 1, lastAt}
		}
	}

	u.hostPort = span{scheme + at + 1, authEnd}
	u.host = u.hostPort
	hostPort := u.hostPort.in(dsn)
	if strings.HasPrefix(hostPort, "[") {
		if i := strings.LastIndexByte(hostPort, ']'); i >= 0 {
			u.host = span{u.hostPort.start + 1, u.hostPort.start + i}
			u.port = span{u.hostPort.start + i + 1, authEnd}
			if strings.HasPrefix(hostPort[i+1:], ":") {
				u.port.start++
			}
		}
	} else if i := strings.LastIndexByte(hostPort, ':'); i >= 0 {
		u.host.end = u.hostPort.start + i
		u.port = span{u.hostPort.start + i + 1, authEnd}
	}
	return u
}

// cutQuery returns where the query is in s from index from on: after its
// first '?', up to the first '#' after that or the end of s; noSpan if
// there is no '?'.
func cutQuery(s string, from int) span {
	q := strings.IndexByte(s[from:], '?')
	if q < 0 {
		return noSpan
	}
	start := from + q + 1
	end := len(s)
	if hash := strings.IndexByte(s[start:], '#'); hash >= 0 {
		end = start + hash
	}
	return span{start, end}
}

// queryParam is one '&'-separated part of a URL query, by byte offsets
// into the DSN, escapes not decoded.
type queryParam struct {
	part span // name, '=' and value
	name span // up to the first '=', or the whole part
	// value is after the first '='; noSpan if there is none.
	value span
}

// queryScanner walks the '&'-separated parts of a URL query, as
// url.ParseQuery splits it. It yields every part, even one that
// url.ParseQuery drops (empty, or holding a ';').
type queryScanner struct {
	dsn  string
	pos  int // where the next part starts
	end  int // where the query ends
	done bool
}

// newQueryScanner walks the query at q of dsn; q must be there.
func newQueryScanner(dsn string, q span) queryScanner {
	return queryScanner{dsn: dsn, pos: q.start, end: q.end}
}

// next returns the next part, or false after the last. An empty query has
// one part, empty.
func (s *queryScanner) next() (queryParam, bool) {
	if s.done {
		return queryParam{}, false
	}
	p := queryParam{part: span{s.pos, s.end}, value: noSpan}
	if amp := strings.IndexByte(s.dsn[s.pos:s.end], '&'); amp >= 0 {
		p.part.end = s.pos + amp
		s.pos = p.part.end + 1
	} else {
		s.done = true
	}
	p.name = p.part
	if eq := strings.IndexByte(p.part.in(s.dsn), '='); eq >= 0 {
		p.name.end = p.part.start + eq
		p.value = span{p.name.end + 1, p.part.end}
	}
	return p, true
}
