package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The example: Go's url.Parse error, which lib/pq returns from the
// first Ping, quotes the whole DSN.
func TestRedactMalformedURLThroughPing(t *testing.T) {
	const dsn = "postgres://postgres:Sup3rS3cretPW@127.0.0.1:notaport/postgres?sslmode=disable"
	pqDB, err := sql.Open("postgres", dsn)
	require.NoError(t, err)
	defer pqDB.Close()
	require.ErrorContains(t, pqDB.Ping(), "Sup3rS3cretPW", "lib/pq leaks it (else this test proves nothing)")

	db, err := sql.Open(DriverName, dsn)
	require.NoError(t, err)
	defer db.Close()
	err = db.Ping()
	require.Error(t, err)
	t.Log(err)
	assert.NotContains(t, err.Error(), "Sup3rS3cretPW")
	assert.Contains(t, err.Error(), `invalid port ":notaport" after host`, "still says what is wrong")
	assert.Contains(t, err.Error(), "postgres://postgres:xxxxx@127.0.0.1:notaport/postgres?sslmode=disable")
	var urlErr *url.Error
	assert.False(t, errors.As(err, &urlErr), "the url.Error, whose URL field holds the password, must not be reachable")
}

func TestRedactDSNErrors(t *testing.T) {
	for _, tc := range []struct {
		dsn, secret string
		keep        []string // what the error must still say
	}{
		{"postgres://u:pa%20ss%3Aw0rd@h:x/db", "pa ss:w0rd", []string{`invalid port ":x" after host`}},
		{"postgres://u:pa%20ss%3Aw0rd@h:x/db", "pa%20ss%3Aw0rd", nil},
		{`postgres://u:q"uo\te@h:x/db`, `q"uo\te`, []string{"invalid port"}},
		{"postgres://u:%zzsecret@h/db", "%zzsecret", []string{"invalid URL escape"}},
		{"postgres://u@h:x/db?password=S3cretQuery&sslmode=disable", "S3cretQuery", []string{"invalid port"}},
		{"postgresql://u@h:x/db?sslpassword=KeyS3cret", "KeyS3cret", []string{"invalid port"}},
		{"host=h port=notaport user=u password=plainS3cret", "plainS3cret", []string{`"port"`, "notaport"}},
		{`host=h port=notaport password='quoted S3cret' user=u`, "quoted S3cret", []string{"notaport"}},
		{`host=h port=notaport password='it\'s S3cret' user=u`, `it's S3cret`, []string{"notaport"}},
		{`host=h port=notaport password=esc\ aped\\S3cret`, `esc aped\S3cret`, []string{"notaport"}},
		{`password='unterminated S3cret`, "unterminated S3cret", []string{"unterminated quoted string"}},
		{"host=h sslmode=bogus password=S3cretAgain", "S3cretAgain", []string{`"bogus" is not supported`}},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			c, err := (&Driver{inner: pq.Driver{}, settings: defaultSettings()}).OpenConnector(tc.dsn)
			require.NoError(t, err, "lib/pq reports a bad DSN when connecting")
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // nothing may be dialled
			_, err = c.Connect(ctx)
			require.Error(t, err)
			t.Log(err)
			assert.NotContains(t, err.Error(), tc.secret)
			for _, k := range tc.keep {
				assert.Contains(t, err.Error(), k)
			}
		})
	}
}

// TestRedactKeepsOtherErrors: an error without a password is the inner
// driver's own error value; a *pq.Error is never touched.
func TestRedactKeepsOtherErrors(t *testing.T) {
	rd := newRedactor("host=h password=S3cret")
	pqErr := &pq.Error{Code: "28P01", Message: "password authentication failed for user \"u\""}
	assert.Same(t, pqErr, rd.redact(pqErr))
	plain := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	assert.Same(t, plain, rd.redact(plain))
	assert.Nil(t, rd.redact(nil))

	wrapped := rd.redact(&url.Error{Op: "parse", URL: "password=S3cret", Err: context.DeadlineExceeded})
	assert.NotContains(t, wrapped.Error(), "S3cret")
	assert.ErrorIs(t, wrapped, context.DeadlineExceeded, "errors.Is still sees through")

	t.Run("through database/sql", func(t *testing.T) {
		db := sql.OpenDB(errorConnectorFor(t, pqErr))
		defer db.Close()
		err := db.Ping()
		got, ok := err.(*pq.Error) //nolint:errorlint // drop-in code asserts directly
		require.True(t, ok, "%T", err)
		assert.Same(t, pqErr, got)
	})
}

// TestRedactUnknownDSN: with a connector jsonstream did not build from a
// DSN, the patterns of a password in text still apply.
func TestRedactUnknownDSN(t *testing.T) {
	for _, msg := range []string{
		`parse "postgres://u:S3cret@h:x/db": invalid port`,
		`bad DSN "host=h password=S3cret port=x"`,
		`bad DSN "host=h password='S3cret with space' port=x"`,
		`postgresql://u@h/db?sslmode=disable&password=S3cret&x=1`,
		`host=h sslpassword=S3cret sslkey=/k`,
	} {
		_, err := errorConnectorFor(t, errors.New(msg)).Connect(context.Background())
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "S3cret", msg)
	}
}

// pingError is the error of a first Ping through sql.Open(driverName, dsn).
func pingError(t *testing.T, driverName, dsn string) error {
	t.Helper()
	db, err := sql.Open(driverName, dsn)
	require.NoError(t, err)
	defer db.Close()
	err = db.Ping()
	require.Error(t, err)
	return err
}

// Issue 17, point 2: url.Parse ends the userinfo at an unescaped '/', '?'
// or '#' in the password, and its error quotes what came before as a port
// (and, cut at a '#', as the URL). None of it may show.
func TestRedactURLPasswordWithDelimiter(t *testing.T) {
	for _, tc := range []struct {
		dsn, want string
		secrets   []string
	}{
		{"postgres://u:Hunter2Secret/tail@host/db", `parse "postgres://u:xxxxx@host/db": invalid port ":xxxxx" after host`, []string{"Hunter2Secret", "tail"}},
		{"postgres://u:Hunter2Secret#tail@host/db", `parse "postgres://u:xxxxx": invalid port ":xxxxx" after host`, []string{"Hunter2Secret", "tail"}},
		{"postgres://u:Hunter2Secret?tail@host/db", `parse "postgres://u:xxxxx@host/db": invalid port ":xxxxx" after host`, []string{"Hunter2Secret", "tail"}},
		// A '@' before the delimiter: url.Parse's host and port are the
		// password's.
		{"postgres://u:p@ss:w0rd/x?y#z@host/db", `parse "postgres://u:xxxxx": invalid port ":xxxxx" after host`, []string{"p@ss", "w0rd"}},
		// Digits before the '/' pass as a port; the escape after it is the
		// password's.
		{"postgres://u:1234/%zzS3cret@host/db", `parse "postgres://u:xxxxx@host/db": invalid URL escape "xxxxx"`, []string{"%zz", "S3cret"}},
		// Digits out of a port's range: lib/pq quotes them (found by
		// FuzzRedactDSN), as it quotes the query values it rejects.
		{"postgres://u:100000#S3cret@host/db", `pq: wrong value for "port": strconv.ParseUint: parsing "xxxxx": value out of range`, []string{"100000", "S3cret"}},
		// url.Parse quotes the URL up to the '#', valid port or not, and
		// the host it rejects, here the password's.
		{"postgres:// :1234#S3cret@host/db", `parse "postgres:// :xxxxx": invalid character " " in host name`, []string{"1234"}},
		{"postgres://u:x@[S3cretHost]/y@host/db", `parse "postgres://u:xxxxx@host/db": invalid host: ParseAddr("xxxxx"): unable to parse IP`, []string{"S3cretHost"}},
		{"postgres://u:12?sslmode=S3cretTail@host/db", `pq: wrong value for "xxxxx": "xxxxx@host/db" is not supported; supported values are disable, allow, prefer, require, verify-full, or verify-ca`, []string{"S3cretTail"}},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			require.ErrorContains(t, pingError(t, "postgres", tc.dsn), tc.secrets[0], "lib/pq leaks it (else this test proves nothing)")
			err := pingError(t, DriverName, tc.dsn)
			for _, secret := range tc.secrets {
				assert.NotContains(t, err.Error(), secret)
			}
			assert.Equal(t, tc.want, err.Error())
		})
	}
}

// TestRedactFragmentsOfURLPassword: the redactor masks every piece of such
// a password that url.Parse may quote, and no more than it must where the
// '@' may belong to the query.
func TestRedactFragmentsOfURLPassword(t *testing.T) {
	rd := newRedactor("postgres://u:Hunter2Secret/tail@host/db")
	assert.Equal(t, "postgres://u:xxxxx@host/db", rd.masked)
	assert.Equal(t, `invalid port ":xxxxx" after host; "xxxxx"; "xxxxx"`,
		rd.redactString(`invalid port ":Hunter2Secret" after host; "Hunter2Secret/tail"; "Hunter2Secret%2Ftail"`))

	// A valid port is a port, and the host a host: the '@' may be the
	// query's.
	rd = newRedactor("postgres://mydb:5432/mydb?application_name=me@laptop")
	for _, msg := range []string{"dial tcp 10.0.0.1:5432: connect: connection refused", "dial tcp: lookup mydb: no such host"} {
		assert.Equal(t, msg, rd.redactString(msg))
	}
	// url.Parse's own reading still counts: its password "pw" is masked.
	rd = newRedactor("postgres://u:pw@host/db?application_name=me@laptop")
	assert.Equal(t, `dial tcp: lookup host: no such host; password "xxxxx"`,
		rd.redactString(`dial tcp: lookup host: no such host; password "pw"`))
}

// Issue 17, tests that hold the new code: where lib/pq's errors quote bytes
// of the password, every byte of it is masked, whether jsonstream has the
// DSN (sql.Open) or only the error (a connector the caller built).
func TestRedactQuotedPasswordBytes(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"postgres://u@h:x/db?password=ab'cd", `parse "postgres://u@h:x/db?password=xxxxx": invalid port ":x" after host`},
		{"postgres://u:%zzsecret@h/db", `parse "postgres://u:xxxxx@h/db": invalid URL escape "xxxxx"`},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			assert.Equal(t, tc.want, pingError(t, DriverName, tc.dsn).Error())

			_, parseErr := url.Parse(tc.dsn)
			require.Error(t, parseErr)
			db := sql.OpenDB(errorConnectorFor(t, parseErr))
			defer db.Close()
			assert.Equal(t, tc.want, db.Ping().Error())
		})
	}
}

// quotingDriver stands for another inner driver: every Open fails with
// an error that quotes the DSN plainly, with %q, and from its password
// parameter on.
func quotingDriver() *fakeDriver {
	return &fakeDriver{open: func(dsn string) error {
		tail := dsn[max(strings.Index(dsn, "password"), 0):]
		return fmt.Errorf("bad DSN %s; %q; at %q", dsn, dsn, tail)
	}}
}

// Escaped key=value passwords, quoted by another inner driver's error,
// are masked whole: as jsonstream reads the DSN (sql.Open) and by the
// patterns for an unknown DSN (a connector of the caller's).
func TestRedactEscapedKeyValuePassword(t *testing.T) {
	for _, dsn := range []string{
		`host=h password=esc\ aped\\S3cret port=x`,
		`host=h password='it\'s S3cret' port=x`,
		`host=h password = esc\ aped\\S3cret port=x`,
		`host=h password = 'it\'s S3cret' port=x`,
		`host=h password=esc\ aped\\S3cret`,
		`host=h password  =  'it\'s S3cret'`,
	} {
		t.Run(dsn, func(t *testing.T) {
			_, innerErr := quotingDriver().Open(dsn)
			for name, c := range map[string]driver.Connector{
				"known DSN":   mustOpenConnector(t, quotingDriver(), dsn),
				"unknown DSN": errorConnectorFor(t, innerErr),
			} {
				db := sql.OpenDB(c)
				err := db.Ping()
				require.NoError(t, db.Close())
				require.Error(t, err)
				for _, piece := range []string{"S3cret", "aped", "it's", `it\'s`, `esc\`} {
					assert.NotContains(t, err.Error(), piece, name)
				}
				assert.Contains(t, err.Error(), "host=h password", name)
			}
		})
	}
}

// lib/pq ends a key=value value at any Unicode space: the part of a
// password after a U+00A0 becomes a key, which its error quotes.
func TestRedactKeyValuePasswordWithUnicodeSpace(t *testing.T) {
	const dsn = "host=h password=my\u00a0S3cretTail port=5432"
	require.ErrorContains(t, pingError(t, "postgres", dsn), "S3cretTail", "lib/pq leaks it (else this test proves nothing)")
	assert.Equal(t, `missing "=" after "xxxxx" in connection info string`, pingError(t, DriverName, dsn).Error())
}

// A key=value password that ends in a lone backslash (lib/pq: "missing
// character after backslash") must not make the redactor read past the
// end of the DSN, in sql.Open or when an error quotes it.
func TestRedactLoneBackslash(t *testing.T) {
	for _, tc := range []struct{ dsn, masked string }{
		{`host=h password=S3cret\`, `host=h password=xxxxx`},
		{`host=h password='S3cret\`, `host=h password='xxxxx`},
		{`password=\`, `password=xxxxx`},
		{`password=S3cret\\\`, `password=xxxxx`},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			err := pingError(t, DriverName, tc.dsn) // must not panic
			assert.NotContains(t, err.Error(), "S3cret")

			assert.Equal(t, tc.masked, newRedactor(tc.dsn).masked)
			for name, c := range map[string]driver.Connector{
				"known DSN":   mustOpenConnector(t, quotingDriver(), tc.dsn),
				"unknown DSN": errorConnectorFor(t, fmt.Errorf("bad DSN %s", tc.dsn)),
			} {
				db := sql.OpenDB(c)
				err := db.Ping()
				require.NoError(t, db.Close())
				require.Error(t, err)
				assert.NotContains(t, err.Error(), "S3cret", name)
				assert.NotContains(t, err.Error(), `\`, name)
			}
		})
	}
}

// A password of one to three bytes is replaced by the mask, not deleted,
// wherever it stands alone; inside a longer word it is that word.
func TestRedactShortPassword(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"postgres://u:ab@h:x/db", `parse "postgres://u:xxxxx@h:x/db": invalid port ":x" after host`},
		{"postgres://u:a#@h:x/db", `parse "postgres://u:xxxxx": invalid port ":xxxxx" after host`},
		{"postgres://u:a/b@h/db", `parse "postgres://u:xxxxx@h/db": invalid port ":xxxxx" after host`},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			assert.Equal(t, tc.want, pingError(t, DriverName, tc.dsn).Error())
		})
	}
	rd := newRedactor("host=h password=ab")
	assert.Equal(t, `password xxxxx rejected, about abc: "xxxxx" (xxxxx)`,
		rd.redactString(`password ab rejected, about abc: "ab" (ab)`))
	rd = newRedactor("host=h password=7")
	assert.Equal(t, `"xxxxx" on port 5437`, rd.redactString(`"7" on port 5437`))
}

// mustOpenConnector is jsonstream's connector for dsn around inner.
func mustOpenConnector(t *testing.T, inner driver.Driver, dsn string) driver.Connector {
	t.Helper()
	d, err := NewDriver(inner)
	require.NoError(t, err)
	c, err := d.OpenConnector(dsn)
	require.NoError(t, err)
	return c
}

// errorConnectorFor is a connector jsonstream did not build from a DSN,
// whose every Connect fails with err.
func errorConnectorFor(t *testing.T, err error) *Connector {
	t.Helper()
	c, cerr := NewConnector(&fakeDriver{open: func(string) error { return err }})
	require.NoError(t, cerr)
	return c
}

// FuzzRedactDSN: whatever surrounds it, no DSN makes jsonstream's error
// carry its password. The password goes into the DSN in each of the ways
// lib/pq reads one; the rest of the DSN is fuzzed to produce every kind of
// parse error. Nothing is dialled.
//
// A leak is the password, as given or as written in the DSN, or any four
// bytes of it in a row (a fragment such as "Hunter2Secret" of
// "Hunter2Secret/tail"), in the message as a person reads it: Go-quoted
// strings decoded, so that the backslash of a `\xf8` escape is no
// password `\`. What the same DSN with another password of the same shape
// says as well is the rest of the DSN speaking, not the password.
func FuzzRedactDSN(f *testing.F) {
	f.Add(uint8(0), "postgres", "Sup3rS3cretPW", "127.0.0.1:notaport", "/postgres?sslmode=disable")
	f.Add(uint8(1), "u", "p@ss:w/rd", "h:x", "")
	f.Add(uint8(2), "u", "a&b=c", "h:x", "/db")
	f.Add(uint8(3), "u", `it's \secret`, "h", " port=x")
	f.Add(uint8(4), "u", "spa ce'q", "h", " sslmode=nope")
	f.Add(uint8(1), "u", "%zz", "h", "")
	f.Add(uint8(5), "u", "secret", "h", " port=x")
	// Passwords with an unescaped '/', '?', '#' or '@' (issue 17).
	f.Add(uint8(6), "u", "Hunter2Secret/tail", "host", "/db")
	f.Add(uint8(6), "u", "Hunter2Secret#tail", "host", "/db")
	f.Add(uint8(6), "u", "Hunter2Secret?tail", "host", "/db")
	f.Add(uint8(6), "u", "1234/S3cretTail", "host", "/db")
	f.Add(uint8(6), "u", "a#b", "host:x", "/db")
	f.Add(uint8(6), "u", "p@ss:w0rd/x?y#z", "127.0.0.1:5432", "/db?sslmode=disable")
	f.Add(uint8(6), "u", "x@Y:abcd#z", "host", "/db")
	f.Add(uint8(6), "u", "%zz/secret", "h", "/db")
	f.Add(uint8(7), "u", "ab'cd", "h:x", "")
	f.Add(uint8(7), "u", "S3cret#tail", "h:x", "&sslmode=disable")
	f.Add(uint8(5), "u", "my\u00a0S3cretTail", "h", " port=5432")
	f.Fuzz(func(t *testing.T, form uint8, user, password, host, rest string) {
		dsn, written, ok := dsnWithPassword(form, user, password, host, rest)
		if !ok || len(password) == 0 {
			return
		}
		msg := unquoteMessage(redactedConnectError(dsn))
		var control *string // what the rest of the DSN says, built when needed
		for _, secret := range []string{password, written} {
			for _, piece := range passwordPieces(secret) {
				if !strings.Contains(msg, piece) {
					continue
				}
				if control == nil {
					otherDSN, _, _ := dsnWithPassword(form, user, samePasswordShape(password), host, rest)
					other := unquoteMessage(redactedConnectError(otherDSN))
					control = &other
				}
				if !strings.Contains(*control, piece) {
					t.Fatalf("error carries %q of the password %q\nDSN: %q\nerror: %s", piece, password, dsn, redactedConnectError(dsn))
				}
			}
		}
	})
}

// passwordPieces are what of a password must not be seen: all of it, or
// when it is longer than four bytes every four bytes of it in a row.
func passwordPieces(password string) []string {
	const n = 4
	if len(password) <= n {
		return []string{password}
	}
	pieces := make([]string, 0, len(password)-n+1)
	for i := 0; i+n <= len(password); i++ {
		pieces = append(pieces, password[i:i+n])
	}
	return pieces
}

// samePasswordShape returns another password that every DSN form parses
// as it parses p: each digit, hex letter and other letter is swapped for
// another of its class, so that escapes, ports and delimiters stay what
// they were. A piece of p that the DSN's error shows for it too comes
// from the rest of the DSN.
func samePasswordShape(p string) string {
	rotate := func(c, first byte, n int) byte { return first + (c-first+byte(n/2))%byte(n) }
	b := []byte(p)
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
			b[i] = rotate(c, '0', 10)
		case c >= 'a' && c <= 'f':
			b[i] = rotate(c, 'a', 6)
		case c >= 'A' && c <= 'F':
			b[i] = rotate(c, 'A', 6)
		case c >= 'g' && c <= 'z':
			b[i] = rotate(c, 'g', 20)
		case c >= 'G' && c <= 'Z':
			b[i] = rotate(c, 'G', 20)
		}
	}
	return string(b)
}

// unquoteMessage decodes the Go-quoted strings in msg (url.Error and lib/pq
// quote with %q), leaving the rest as it is.
func unquoteMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); {
		if msg[i] == '"' {
			if end := closingQuote(msg, i); end > 0 {
				if s, err := strconv.Unquote(msg[i : end+1]); err == nil {
					b.WriteString(s)
					i = end + 1
					continue
				}
			}
		}
		b.WriteByte(msg[i])
		i++
	}
	return b.String()
}

// closingQuote returns the index of the '"' that ends the quoted string
// opened at msg[open], or -1.
func closingQuote(msg string, open int) int {
	for i := open + 1; i < len(msg); i++ {
		switch msg[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// dsnWithPassword puts password into a DSN in one of the forms lib/pq
// reads, and returns the password as the DSN writes it; false when password
// cannot be written in that form.
func dsnWithPassword(form uint8, user, password, host, rest string) (dsn, written string, ok bool) {
	form %= 8
	// In key=value forms, a user or host that opens a quote or holds a
	// space would make the password the value of something else.
	if form >= 3 && form <= 5 && strings.ContainsFunc(user+host, func(r rune) bool { return r == '\'' || r == '\\' || r == '=' || unicode.IsSpace(r) }) {
		return "", "", false
	}
	// In query forms, what follows the password must not extend it.
	if (form == 2 || form == 7) && rest != "" && rest[0] != '&' && rest[0] != '#' {
		rest = "&" + rest
	}
	switch form {
	case 0: // URL userinfo, escaped by net/url
		userinfo := url.UserPassword(user, password).String()
		_, written, _ = strings.Cut(userinfo, ":") // the user's ':' is escaped
		return "postgres://" + userinfo + "@" + host + rest, written, true
	case 1: // URL userinfo as written by hand
		if strings.ContainsAny(password, "/?#@") || strings.ContainsAny(user, ":/?#@") || strings.Contains(host, "@") {
			return "", "", false
		}
		return "postgresql://" + user + ":" + password + "@" + host + rest, password, true
	case 2: // URL query parameter
		written = url.QueryEscape(password)
		return "postgres://" + host + "?password=" + written + rest, written, true
	case 3: // key=value, quoted
		written = strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(password)
		return "host=" + host + " password='" + written + "'" + rest, written, true
	case 4: // key=value, unquoted with escapes
		var esc strings.Builder
		for _, r := range password {
			if r == '\\' || r == '\'' || unicode.IsSpace(r) {
				esc.WriteByte('\\')
			}
			esc.WriteRune(r)
		}
		written = esc.String()
		return "user=" + user + " password=" + written + " host=" + host + rest, written, true
	case 5: // key=value, unquoted, password first; a space outside ASCII
		// ends the value for lib/pq, not for whoever wrote it
		if strings.ContainsFunc(password, func(r rune) bool { return r == '\\' || r == '\'' || r < utf8.RuneSelf && unicode.IsSpace(r) }) {
			return "", "", false
		}
		return "password=" + password + " host=" + host + rest, password, true
	case 6: // URL userinfo as written by hand, holding any of "/?#@:"; the
		// password runs to the last '@', so none may follow it
		if strings.ContainsAny(user, ":/?#@") || strings.Contains(host+rest, "@") {
			return "", "", false
		}
		return "postgres://" + user + ":" + password + "@" + host + rest, password, true
	default: // URL query parameter as written by hand
		if strings.Contains(password, "&") || strings.ContainsAny(host, "?#&") {
			return "", "", false
		}
		return "postgres://" + host + "/db?password=" + password + rest, password, true
	}
}

// redactedConnectError is the error jsonstream gives for dsn, or "".
// Dialling fails at once and always the same way, so that the message
// depends on the DSN alone.
func redactedConnectError(dsn string) string {
	c, err := (&Driver{inner: pq.Driver{}, settings: defaultSettings()}).OpenConnector(dsn)
	if err != nil {
		return err.Error()
	}
	if pc, ok := c.(*Connector).inner.(*pq.Connector); ok {
		pc.Dialer(NewDialer(&fakeDialer{refuse: errDialRefused}))
	}
	conn, err := c.Connect(context.Background())
	if err != nil {
		return err.Error()
	}
	_ = conn.Close()
	return ""
}

var errDialRefused = errors.New("test dialer refuses")

// TestRedactPostgresqlScheme: a DSN written with the "postgresql://"
// scheme is read as a URL like "postgres://" is, so a piece of its
// password that url.Parse quotes alone (as a port) is masked too.
func TestRedactPostgresqlScheme(t *testing.T) {
	rd := newRedactor("postgresql://u:Hunter2Secret/tail@host/db")
	assert.Equal(t, "postgresql://u:xxxxx@host/db", rd.masked)
	assert.Equal(t, `invalid port ":xxxxx" after host`,
		rd.redactString(`invalid port ":Hunter2Secret" after host`))
}

// TestRedactAdjacentSecretsAreOneMask: occurrences of the password that
// touch are hidden by one mask, so the mask does not tell how often, or
// how long, the password showed.
func TestRedactAdjacentSecretsAreOneMask(t *testing.T) {
	rd := newRedactor("host=h password=S3cret")
	assert.Equal(t, `got "xxxxx"`, rd.redactString(`got "S3cretS3cret"`))
}

// TestRedactOverlappingOccurrences: where occurrences of a password
// overlap in a message, all of them are masked, leaving no tail of one in
// view.
func TestRedactOverlappingOccurrences(t *testing.T) {
	rd := newRedactor("host=h password=HaHaHaHa")
	assert.Equal(t, `got "xxxxx"`, rd.redactString(`got "HaHaHaHaHa"`))
}

// TestRedactDecodedKeyValuePassword: a key=value password with backslash
// escapes is masked as lib/pq decodes it, for an error that quotes the
// password it used.
func TestRedactDecodedKeyValuePassword(t *testing.T) {
	rd := newRedactor(`host=h password=esc\ aped\\S3cret`)
	got := rd.redactString(`the password was esc aped\S3cret.`)
	assert.NotContains(t, got, "S3cret")
	assert.Equal(t, `the password was xxxxx.`, got)
}

// TestRedactDecodedURLPasswords: a URL password is masked as url.Parse
// decodes it, which differs between the userinfo (a '+' stays a '+') and
// the query (a '+' is a space).
func TestRedactDecodedURLPasswords(t *testing.T) {
	rd := newRedactor("postgres://u:a+b%21S3cret@h/db")
	assert.Equal(t, `password "xxxxx" rejected`, rd.redactString(`password "a+b!S3cret" rejected`))

	rd = newRedactor("postgres://u@h/db?password=a+b%21S3cret")
	assert.Equal(t, `password "xxxxx" rejected`, rd.redactString(`password "a b!S3cret" rejected`))
}

// TestRedactQueryEscapedPassword: a key=value password that an error
// shows query-escaped (as in a URL built from the DSN) is masked too.
func TestRedactQueryEscapedPassword(t *testing.T) {
	rd := newRedactor("host=h password='S3cret pass!'")
	got := rd.redactString(`GET /connect?pw=S3cret+pass%21: refused`)
	assert.NotContains(t, got, "S3cret")
	assert.Equal(t, `GET /connect?pw=xxxxx: refused`, got)
}

// TestRedactLeavesPQErrorWithPasswordWord: a *pq.Error is the server's
// own report, which never echoes the DSN: it passes through as the same
// value even when its message happens to hold the password's text, so
// that code asserting *pq.Error keeps working.
func TestRedactLeavesPQErrorWithPasswordWord(t *testing.T) {
	rd := newRedactor("host=h password=authentication")
	pqErr := &pq.Error{Code: "28P01", Message: `password authentication failed for user "u"`}
	got := rd.redact(pqErr)
	assert.Same(t, pqErr, got)
	var asPQ *pq.Error
	assert.True(t, errors.As(got, &asPQ))
}

// TestRedactThreeBytePasswordInsideWord: a password of three bytes is
// still short, so inside a longer word it is left alone, while standing
// alone it is masked.
func TestRedactThreeBytePasswordInsideWord(t *testing.T) {
	rd := newRedactor("host=h password=abc")
	assert.Equal(t, `the abcd table: "xxxxx"`, rd.redactString(`the abcd table: "abc"`))
}

// TestRedactURLQueryPasswords: every query parameter of a URL DSN whose
// name ends in "password" is a password, wherever it stands in the query:
// the masked DSN hides exactly its value, and an error quoting the value
// alone is masked too.
func TestRedactURLQueryPasswords(t *testing.T) {
	rd := newRedactor("postgres://u@h/db?sslmode=disable&application_name=app&password=S3cret")
	assert.Equal(t, "postgres://u@h/db?sslmode=disable&application_name=app&password=xxxxx", rd.masked)

	rd = newRedactor("postgres://u@h/db?sslpassword=KeyS3cret")
	assert.Equal(t, "postgres://u@h/db?sslpassword=xxxxx", rd.masked)
	assert.Equal(t, `cannot decrypt the key with "xxxxx"`, rd.redactString(`cannot decrypt the key with "KeyS3cret"`))
}

// TestRedactFourBytePieceOfURLPassword: a piece of four bytes after a
// delimiter of a URL password, which url.Parse makes a path or query of
// its own, is masked where an error quotes it alone.
func TestRedactFourBytePieceOfURLPassword(t *testing.T) {
	rd := newRedactor("postgres://u:Hunter2Secret/tail@host/db")
	assert.Equal(t, `database "xxxxx" does not exist`, rd.redactString(`database "tail" does not exist`))
}
