package jsonstream

import (
	"cmp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// spanMark is text to insert into a DSN at a byte offset.
type spanMark struct {
	at   int
	text string
}

// markSpans returns s with each mark's text inserted at its offset, marks
// at the same offset in the order given: a span shows as the bytes it
// covers between two marks.
func markSpans(s string, marks ...spanMark) string {
	slices.SortStableFunc(marks, func(a, b spanMark) int { return cmp.Compare(a.at, b.at) })
	var b strings.Builder
	last := 0
	for _, m := range marks {
		b.WriteString(s[last:m.at])
		b.WriteString(m.text)
		last = m.at
	}
	b.WriteString(s[last:])
	return b.String()
}

// showParam renders p in dsn: the key between ‹ and ›, the value as
// written between « and », and '|' where the parameter ends.
func showParam(dsn string, p kvParam) string {
	return markSpans(dsn,
		spanMark{p.key.start, "‹"}, spanMark{p.key.end, "›"},
		spanMark{p.value.start, "«"}, spanMark{p.value.end, "»"},
		spanMark{p.end, "|"})
}

func TestKeyValueScanner(t *testing.T) {
	for _, tc := range []struct {
		dsn    string
		params []string // showParam of each parameter
		err    string   // of the last parameter
	}{
		{"", nil, ""},
		{" \t\n ", nil, ""},
		{"host=db port=5432", []string{"‹host›=«db»| port=5432", "host=db ‹port›=«5432»|"}, ""},
		{"  host = db\t", []string{"  ‹host› = «db»|\t"}, ""},
		{"host=\v\fdb", []string{"‹host›=\v\f«db»|"}, ""},
		// Quoted: the span keeps the quotes out and the escapes in; the
		// parameter ends after the closing quote.
		{`password='a b\'c' user=x`, []string{`‹password›='«a b\'c»'| user=x`, `password='a b\'c' ‹user›=«x»|`}, ""},
		{`k='x'y=z`, []string{`‹k›='«x»'|y=z`, `k='x'‹y›=«z»|`}, ""},
		{`k=''`, []string{`‹k›='«»'|`}, ""},
		// Unquoted: a backslash escapes the byte after it, a space too; a
		// quote inside is a byte of the value.
		{`k=esc\ aped\\ n=1`, []string{`‹k›=«esc\ aped\\»| n=1`, `k=esc\ aped\\ ‹n›=«1»|`}, ""},
		{`k=a'b`, []string{`‹k›=«a'b»|`}, ""},
		{`k=x\`, []string{`‹k›=«x\»|`}, ""},
		{`k=\`, []string{`‹k›=«\»|`}, ""},
		// A value after spaces past '=' is the value, '=' and all, as
		// lib/pq reads it.
		{"k= v=w", []string{"‹k›= «v=w»|"}, ""},
		{"k=", []string{"‹k›=«»|"}, ""},
		{"k= ", []string{"‹k›= «»|"}, ""},
		{"=v", []string{"‹›=«v»|"}, ""},
		// Only ASCII spaces end a value (see splitAtUnicodeSpace).
		{"k=my\u00a0secret x=1", []string{"‹k›=«my\u00a0secret»| x=1", "k=my\u00a0secret ‹x›=«1»|"}, ""},
		// Malformed: nothing follows the parameter that reports it.
		{"jsonstream_close", []string{"‹jsonstream_close›«»|"}, "DSN parameter jsonstream_close has no value"},
		{"a b=c", []string{"‹a›«» b=c|"}, "DSN parameter a has no value"},
		{"x=1 a ", []string{"‹x›=«1»| a ", "x=1 ‹a›«» |"}, "DSN parameter a has no value"},
		{"k='ab", []string{"‹k›='«ab»|"}, "DSN parameter k: unterminated quoted value"},
		{`k='x\'`, []string{`‹k›='«x\'»|`}, "DSN parameter k: unterminated quoted value"},
		{`k='x\`, []string{`‹k›='«x\»|`}, "DSN parameter k: unterminated quoted value"},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			var got []string
			var err error
			s := kvScanner{dsn: tc.dsn}
			for {
				p, more := s.next()
				if !more {
					break
				}
				require.NoError(t, err, "a parameter after a malformed one")
				got = append(got, showParam(tc.dsn, p))
				err = p.err
			}
			assert.Equal(t, tc.params, got)
			if tc.err == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorIs(t, err, ErrInvalidOption)
			assert.EqualError(t, err, "jsonstream: invalid option: "+tc.err)
		})
	}
}

func TestUnquoteKeyValue(t *testing.T) {
	for raw, want := range map[string]string{
		``:              ``,
		`plain`:         `plain`,
		`a\ b`:          `a b`,
		`it\'s`:         `it's`,
		`back\\slash`:   `back\slash`,
		`\q`:            `q`,
		`ends\`:         `ends\`,
		`two\\\`:        `two\\`,
		`my` + "\u00a0": "my\u00a0",
	} {
		assert.Equal(t, want, unquoteKeyValue(raw), raw)
	}
}

func TestSplitAtUnicodeSpace(t *testing.T) {
	assert.Nil(t, splitAtUnicodeSpace("plain secret"), "ASCII spaces are the scanner's")
	assert.Equal(t, []string{"my", "S3cret"}, splitAtUnicodeSpace("my\u00a0S3cret"))
	assert.Equal(t, []string{"a", "b", "c"}, splitAtUnicodeSpace("a\u2028b=c"))
}

// urlParts names the spans of a urlDSN, for tests.
func urlParts(u urlDSN) map[string]span {
	return map[string]span{
		"authority": u.authority, "hostPort": u.hostPort, "host": u.host, "port": u.port,
		"password": u.password, "meantPassword": u.meantPassword,
		"path": u.path, "query": u.query, "fragment": u.fragment,
	}
}

func TestCutURL(t *testing.T) {
	for _, tc := range []struct {
		dsn  string
		want map[string]string // each part there, shown between « and »
	}{
		{"postgres://h", map[string]string{
			"authority": "postgres://«h»", "hostPort": "postgres://«h»", "host": "postgres://«h»",
		}},
		{"postgres://u:pw@db:5432/x?sslmode=disable&a=b#frag", map[string]string{
			"authority": "postgres://«u:pw@db:5432»/x?sslmode=disable&a=b#frag",
			"hostPort":  "postgres://u:pw@«db:5432»/x?sslmode=disable&a=b#frag",
			"host":      "postgres://u:pw@«db»:5432/x?sslmode=disable&a=b#frag",
			"port":      "postgres://u:pw@db:«5432»/x?sslmode=disable&a=b#frag",
			"password":  "postgres://u:«pw»@db:5432/x?sslmode=disable&a=b#frag",
			"path":      "postgres://u:pw@db:5432«/x»?sslmode=disable&a=b#frag",
			"query":     "postgres://u:pw@db:5432/x?«sslmode=disable&a=b»#frag",
			"fragment":  "postgres://u:pw@db:5432/x?sslmode=disable&a=b#«frag»",
		}},
		{"postgresql://u@[::1]:5432?", map[string]string{
			"authority": "postgresql://«u@[::1]:5432»?",
			"hostPort":  "postgresql://u@«[::1]:5432»?",
			"host":      "postgresql://u@[«::1»]:5432?",
			"port":      "postgresql://u@[::1]:«5432»?",
			"query":     "postgresql://u@[::1]:5432?«»",
		}},
		{"postgres://[::1]x/", map[string]string{
			"authority": "postgres://«[::1]x»/", "hostPort": "postgres://«[::1]x»/",
			"host": "postgres://[«::1»]x/", "port": "postgres://[::1]«x»/", "path": "postgres://[::1]x«/»",
		}},
		{"postgres://[::1/db", map[string]string{
			"authority": "postgres://«[::1»/db", "hostPort": "postgres://«[::1»/db", "host": "postgres://«[::1»/db",
			"path": "postgres://[::1«/db»",
		}},
		// A '#' before the first '?': the query is the fragment's.
		{"postgres://h/db#f?x=1", map[string]string{
			"authority": "postgres://«h»/db#f?x=1", "hostPort": "postgres://«h»/db#f?x=1", "host": "postgres://«h»/db#f?x=1",
			"path": "postgres://h«/db»#f?x=1", "fragment": "postgres://h/db#«f?x=1»",
		}},
		// A password holding '/': url.Parse's authority ends there, and
		// without an '@' in it the digits-or-not after the ':' are the
		// port; the writer meant the password to run to the last '@'.
		{"postgres://u:Hunter2Secret/tail@host/db", map[string]string{
			"authority":     "postgres://«u:Hunter2Secret»/tail@host/db",
			"hostPort":      "postgres://«u:Hunter2Secret»/tail@host/db",
			"host":          "postgres://«u»:Hunter2Secret/tail@host/db",
			"port":          "postgres://u:«Hunter2Secret»/tail@host/db",
			"meantPassword": "postgres://u:«Hunter2Secret/tail»@host/db",
			"path":          "postgres://u:Hunter2Secret«/tail@host/db»",
		}},
		{"postgres://u:Hunter2Secret#tail@host/db", map[string]string{
			"authority":     "postgres://«u:Hunter2Secret»#tail@host/db",
			"hostPort":      "postgres://«u:Hunter2Secret»#tail@host/db",
			"host":          "postgres://«u»:Hunter2Secret#tail@host/db",
			"port":          "postgres://u:«Hunter2Secret»#tail@host/db",
			"meantPassword": "postgres://u:«Hunter2Secret#tail»@host/db",
			"fragment":      "postgres://u:Hunter2Secret#«tail@host/db»",
		}},
		// An '@' before the '/': url.Parse's password ends at it.
		{"postgres://u:p@ss:w0rd/x?y#z@host/db", map[string]string{
			"authority":     "postgres://«u:p@ss:w0rd»/x?y#z@host/db",
			"hostPort":      "postgres://u:p@«ss:w0rd»/x?y#z@host/db",
			"host":          "postgres://u:p@«ss»:w0rd/x?y#z@host/db",
			"port":          "postgres://u:p@ss:«w0rd»/x?y#z@host/db",
			"password":      "postgres://u:«p»@ss:w0rd/x?y#z@host/db",
			"meantPassword": "postgres://u:«p@ss:w0rd/x?y#z»@host/db",
			"path":          "postgres://u:p@ss:w0rd«/x»?y#z@host/db",
			"query":         "postgres://u:p@ss:w0rd/x?«y»#z@host/db",
			"fragment":      "postgres://u:p@ss:w0rd/x?y#«z@host/db»",
		}},
		// An '@' in the query, the password ':' in the userinfo: both
		// readings.
		{"postgres://u:pw@host/db?application_name=me@laptop", map[string]string{
			"authority":     "postgres://«u:pw@host»/db?application_name=me@laptop",
			"hostPort":      "postgres://u:pw@«host»/db?application_name=me@laptop",
			"host":          "postgres://u:pw@«host»/db?application_name=me@laptop",
			"password":      "postgres://u:«pw»@host/db?application_name=me@laptop",
			"meantPassword": "postgres://u:«pw@host/db?application_name=me»@laptop",
			"path":          "postgres://u:pw@host«/db»?application_name=me@laptop",
			"query":         "postgres://u:pw@host/db?«application_name=me@laptop»",
		}},
		// No ':' before the '@': a user, no password.
		{"postgres://u@h/x@y", map[string]string{
			"authority": "postgres://«u@h»/x@y", "hostPort": "postgres://u@«h»/x@y", "host": "postgres://u@«h»/x@y",
			"path": "postgres://u@h«/x@y»",
		}},
		// An escape is a span's bytes, not decoded.
		{"postgres://u:%zz@h", map[string]string{
			"authority": "postgres://«u:%zz@h»", "hostPort": "postgres://u:%zz@«h»", "host": "postgres://u:%zz@«h»",
			"password": "postgres://u:«%zz»@h",
		}},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			got := map[string]string{}
			for name, sp := range urlParts(cutURL(tc.dsn)) {
				if sp.ok() {
					got[name] = markSpans(tc.dsn, spanMark{sp.start, "«"}, spanMark{sp.end, "»"})
				}
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestCutQuery(t *testing.T) {
	for _, tc := range []struct {
		s     string
		from  int
		query string // "-" for noSpan
	}{
		{"h/db", 0, "-"},
		{"h/db?", 0, ""},
		{"h/db?a=1&b", 0, "a=1&b"},
		{"h/db?a=1#f?b", 0, "a=1"},
		{"h#f?b=2#g", 2, "b=2"},
		{"?x?y", 1, "y"},
	} {
		got := "-"
		if q := cutQuery(tc.s, tc.from); q.ok() {
			got = q.in(tc.s)
			assert.Equal(t, '?', rune(tc.s[q.start-1]), tc.s)
		}
		assert.Equal(t, tc.query, got, tc.s)
	}
}

func TestQueryScanner(t *testing.T) {
	for _, tc := range []struct {
		dsn   string
		parts []string // name, then "=value" if the part has '='
	}{
		{"postgres://h?", []string{""}},
		{"postgres://h?a=1", []string{"a=1"}},
		{"postgres://h?a=1&&b&c=%zz=x&=v&;#a=2", []string{"a=1", "", "b", "c=%zz=x", "=v", ";"}},
		{"postgres://h?a=&b=2", []string{"a=", "b=2"}},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			u := cutURL(tc.dsn)
			require.True(t, u.query.ok())
			var got []string
			for s := newQueryScanner(tc.dsn, u.query); ; {
				p, more := s.next()
				if !more {
					break
				}
				part := p.name.in(tc.dsn)
				assert.Equal(t, p.part.start, p.name.start)
				if p.value.ok() {
					assert.Equal(t, p.name.end+1, p.value.start)
					assert.Equal(t, p.part.end, p.value.end)
					part += "=" + p.value.in(tc.dsn)
				} else {
					assert.Equal(t, p.part, p.name)
				}
				assert.Equal(t, p.part.in(tc.dsn), part)
				got = append(got, part)
			}
			assert.Equal(t, tc.parts, got)
		})
	}
}

// TestKVScannerUnicodeSpaces: with pqSpaces a no-break space ends a value
// and starts the next key, as in lib/pq; without, it is part of the value,
// as the redactor reads a password.
func TestKVScannerUnicodeSpaces(t *testing.T) {
	const dsn = "a=1\u00a0b=2"
	var got []string
	for s := (kvScanner{dsn: dsn, pqSpaces: true}); ; {
		p, more := s.next()
		if !more {
			break
		}
		require.NoError(t, p.err)
		got = append(got, p.key.in(dsn)+"="+p.value.in(dsn))
	}
	assert.Equal(t, []string{"a=1", "b=2"}, got)

	s := kvScanner{dsn: dsn}
	p, more := s.next()
	require.True(t, more)
	assert.Equal(t, "1\u00a0b=2", p.value.in(dsn))
	_, more = s.next()
	assert.False(t, more)
}
