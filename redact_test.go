package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode"

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
		c, err := NewConnector(errorConnector{pqErr})
		require.NoError(t, err)
		db := sql.OpenDB(c)
		defer db.Close()
		err = db.Ping()
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
		c, err := NewConnector(errorConnector{errors.New(msg)})
		require.NoError(t, err)
		_, err = c.Connect(context.Background())
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "S3cret", msg)
	}
}

// errorConnector fails every Connect with err.
type errorConnector struct{ err error }

func (e errorConnector) Connect(context.Context) (driver.Conn, error) { return nil, e.err }
func (e errorConnector) Driver() driver.Driver                        { return pq.Driver{} }

// FuzzRedactDSN: whatever surrounds it, no DSN makes jsonstream's error
// carry its password. The password goes into the DSN in each of the ways
// lib/pq reads one; the rest of the DSN is fuzzed to produce every kind of
// parse error. Nothing is dialled.
func FuzzRedactDSN(f *testing.F) {
	f.Add(uint8(0), "postgres", "Sup3rS3cretPW", "127.0.0.1:notaport", "/postgres?sslmode=disable")
	f.Add(uint8(1), "u", "p@ss:w/rd", "h:x", "")
	f.Add(uint8(2), "u", "a&b=c", "h:x", "/db")
	f.Add(uint8(3), "u", `it's \secret`, "h", " port=x")
	f.Add(uint8(4), "u", "spa ce'q", "h", " sslmode=nope")
	f.Add(uint8(1), "u", "%zz", "h", "")
	f.Add(uint8(5), "u", "secret", "h", " port=x")
	f.Fuzz(func(t *testing.T, form uint8, user, password, host, rest string) {
		dsn, ok := dsnWithPassword(form, user, password, host, rest)
		if !ok || len(password) == 0 {
			return
		}
		msg := redactedConnectError(dsn)
		if msg == "" || !strings.Contains(msg, password) {
			return
		}
		// The password may be a word the message has anyway ("host",
		// "port"): the same DSN with another password says it too.
		other := strings.Repeat("Z", len(password))
		if strings.Contains(password, "Z") {
			other = strings.Repeat("Q", len(password))
		}
		otherDSN, _ := dsnWithPassword(form, user, other, host, rest)
		if strings.Contains(redactedConnectError(otherDSN), password) {
			return
		}
		t.Fatalf("error carries the password %q\nDSN: %q\nerror: %s", password, dsn, msg)
	})
}

// dsnWithPassword puts password into a DSN in one of the forms lib/pq
// reads; false when password cannot be written in that form.
func dsnWithPassword(form uint8, user, password, host, rest string) (string, bool) {
	// In key=value forms, a user or host that opens a quote or holds a
	// space would make the password the value of something else.
	if form%6 >= 3 && strings.ContainsFunc(user+host, func(r rune) bool { return r == '\'' || r == '\\' || r == '=' || unicode.IsSpace(r) }) {
		return "", false
	}
	switch form % 6 {
	case 0: // URL userinfo, escaped by net/url
		return "postgres://" + url.UserPassword(user, password).String() + "@" + host + rest, true
	case 1: // URL userinfo as written by hand
		if strings.ContainsAny(password, "/?#@") || strings.ContainsAny(user, ":/?#@") || strings.Contains(host, "@") {
			return "", false
		}
		return "postgresql://" + user + ":" + password + "@" + host + rest, true
	case 2: // URL query parameter
		return "postgres://" + host + "?password=" + url.QueryEscape(password) + rest, true
	case 3: // key=value, quoted
		esc := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(password)
		return "host=" + host + " password='" + esc + "'" + rest, true
	case 4: // key=value, unquoted with escapes
		var esc strings.Builder
		for _, r := range password {
			if r == '\\' || r == '\'' || unicode.IsSpace(r) {
				esc.WriteByte('\\')
			}
			esc.WriteRune(r)
		}
		return "user=" + user + " password=" + esc.String() + " host=" + host + rest, true
	default: // key=value, unquoted, password first
		if strings.ContainsFunc(password, func(r rune) bool { return r == '\\' || r == '\'' || unicode.IsSpace(r) }) {
			return "", false
		}
		return "password=" + password + " host=" + host + rest, true
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
		pc.Dialer(NewDialer(refusingDialer{}))
	}
	conn, err := c.Connect(context.Background())
	if err != nil {
		return err.Error()
	}
	_ = conn.Close()
	return ""
}

// refusingDialer fails every dial without touching the network.
type refusingDialer struct{}

var errDialRefused = errors.New("test dialer refuses")

func (refusingDialer) Dial(string, string) (net.Conn, error) { return nil, errDialRefused }
func (refusingDialer) DialTimeout(string, string, time.Duration) (net.Conn, error) {
	return nil, errDialRefused
}
