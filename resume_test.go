package jsonstream

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCompareNumeric: numeric keys compare as PostgreSQL orders numeric
// values, not as text; a value that is not one is an error.
func TestCompareNumeric(t *testing.T) {
	ordered := []string{"-Infinity", "-100", "-9.5", "-9.25", "-0.001", "0", "0.000", "0.5", "00.75", "9", "9.0001", "10", "100.5", "Infinity", "NaN"}
	for i, a := range ordered {
		for j, b := range ordered {
			got, err := compareNumeric(a, b)
			require.NoError(t, err)
			want := cmpOrdered(int64(i), int64(j))
			if (a == "0" && b == "0.000") || (a == "0.000" && b == "0") {
				want = 0
			}
			assert.Equal(t, want, got, "%s vs %s", a, b)
		}
	}
	for _, bad := range []string{"", "-", "1.2.3", "12a", "1e5"} {
		_, err := compareNumeric(bad, "1")
		assert.Error(t, err, bad)
	}
}

// TestCompareKey: each kind of key compares its driver values; values of
// another Go type than the kind's, and NaN, are errors.
func TestCompareKey(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		kind keyKind
		a, b driver.Value
		want int
	}{
		{keyInt, int64(1), int64(2), -1},
		{keyInt, int64(2), int64(2), 0},
		{keyFloat, 2.5, 1.5, 1},
		{keyNumeric, []byte("10"), []byte("9"), 1},
		{keyUUID, []byte("0a"), []byte("0b"), -1},
		{keyUUID, []byte("b"), "a", 1},
		{keyBytes, []byte{0, 1}, []byte{0, 1}, 0},
		{keyTime, t0, t0.Add(time.Second), -1},
		{keyBool, false, true, -1},
		{keyBool, true, false, 1},
		{keyBool, true, true, 0},
	}
	for _, c := range cases {
		got, err := compareKey(c.kind, c.a, c.b)
		require.NoError(t, err, "%v %v", c.a, c.b)
		assert.Equal(t, c.want, got, "%v vs %v", c.a, c.b)
	}
	for _, bad := range []struct {
		kind keyKind
		a, b driver.Value
	}{{keyInt, int64(1), "1"}, {keyFloat, 1.0, nan()}, {keyTime, t0, "x"}, {keyBool, true, int64(1)}, {keyNumeric, "x", "1"}} {
		_, err := compareKey(bad.kind, bad.a, bad.b)
		assert.Error(t, err, "%v %v", bad.a, bad.b)
	}
}

func nan() float64 { var z float64; return z / z }

// TestKeyKinds: the column types a key may have, and one it may not.
func TestKeyKinds(t *testing.T) {
	for _, typ := range []string{"INT2", "INT4", "INT8", "FLOAT4", "FLOAT8", "NUMERIC", "UUID", "BYTEA", "DATE", "TIMESTAMP", "TIMESTAMPTZ", "BOOL"} {
		_, ok := keyKindOf(typ)
		assert.True(t, ok, typ)
	}
	// Text orders by a collation jsonstream cannot see; lib/pq returns oid
	// as bytes.
	for _, typ := range []string{"TEXT", "VARCHAR", "BPCHAR", "NAME", "OID", "JSONB"} {
		_, ok := keyKindOf(typ)
		assert.False(t, ok, typ)
	}
}

// TestKeepCopiesBytes: a kept key owns its bytes, which the driver
// reuses for the next row, and reuses its own buffer.
func TestKeepCopiesBytes(t *testing.T) {
	src := []byte("abc")
	k := keep(src, nil)
	src[0] = 'x'
	assert.Equal(t, []byte("abc"), k)
	k2 := keep([]byte("de"), k)
	assert.Equal(t, []byte("de"), k2)
	assert.Equal(t, &k.([]byte)[0], &k2.([]byte)[0], "the buffer was not reused")
	assert.Equal(t, int64(5), keep(int64(5), nil))
}

// TestFirstWord: the word noteSession looks at, past spaces and comments.
func TestFirstWord(t *testing.T) {
	for q, want := range map[string]string{
		"SET search_path TO x":              "SET",
		"  -- c\n /* a /* b */ */reset all": "reset",
		"discard ALL":                       "discard",
		"-- c\rSET x TO 1":                  "SET",
		"SELECT 1":                          "SELECT",
		"/* open":                           "",
		"":                                  "",
	} {
		assert.Equal(t, want, firstWord(q), q)
	}
}

// TestNoteSession: a statement that sets what a new session would not
// have is seen first in the text or after a semicolon, and a text whose
// statements the scan is not sure of counts as one.
func TestNoteSession(t *testing.T) {
	for q, want := range map[string]bool{
		"SET search_path TO x":            true,
		"SELECT 1":                        false,
		"SELECT 1; SELECT 2":              false,
		"SELECT 1; SET search_path TO x":  true,
		"SELECT ';SET x'":                 false,
		"SELECT '\\'; SELECT 2; SELECT 3": true,
		"SELECT '\\' || 'x'":              false,
	} {
		c := &conn{}
		c.noteSession(q)
		assert.Equal(t, want, c.sessionSet, q)
	}
}

// TestRetryable: the failures a continuation is made for, and those it is
// not.
func TestRetryable(t *testing.T) {
	yes := []error{
		&pq.Error{Code: "40001"}, &pq.Error{Code: "57P01"}, &pq.Error{Code: "57P02"}, &pq.Error{Code: "57P03"},
		&pq.Error{Code: "08006"}, &SessionEndedError{Server: &pq.Error{Code: "57P01"}},
		driver.ErrBadConn, fmt.Errorf("read: %w", io.ErrUnexpectedEOF), io.EOF,
		&net.OpError{Op: "read", Err: errors.New("connection reset")},
	}
	for _, err := range yes {
		assert.True(t, retryable(err), "%v", err)
	}
	no := []error{
		&pq.Error{Code: "22012"}, &pq.Error{Code: "57014"}, ErrCanceled, ErrPauseTimeout,
		context.Canceled, context.DeadlineExceeded, fmt.Errorf("%w: x", ErrResumeOrder), errors.New("other"),
	}
	for _, err := range no {
		assert.False(t, retryable(err), "%v", err)
	}
}

// TestContinuedText: the continuation quotes the key's names, casts its
// values to the columns' types, keeps the original arguments first,
// passes bytes of a non-bytea key as text, and spells out a key of mixed
// directions.
func TestContinuedText(t *testing.T) {
	rr := &resumeRows{
		query: "SELECT * FROM t WHERE a > $1",
		args:  []driver.NamedValue{{Ordinal: 1, Value: int64(3)}},
		set:   resumeSettings{key: []KeyColumn{Asc(`we"ird`), Desc("u")}},
		kinds: []keyKind{keyNumeric, keyUUID}, types: []string{"numeric", "uuid"},
		idx: []int{0, 1}, last: []driver.Value{[]byte("1.5"), []byte("0a")}, have: true,
	}
	q, args := rr.continued()
	assert.Equal(t, "SELECT * FROM (\nSELECT * FROM t WHERE a > $1\n) AS jsonstream_resume WHERE "+
		`("we""ird" > $2::numeric) OR ("we""ird" = $2::numeric AND "u" < $3::uuid) ORDER BY "we""ird", "u" DESC`, q)
	assert.Equal(t, []driver.NamedValue{{Ordinal: 1, Value: int64(3)}, {Ordinal: 2, Value: "1.5"}, {Ordinal: 3, Value: "0a"}}, args)
	var re *ResumeError
	err := error(&ResumeError{Attempts: 2, Err: io.EOF})
	require.ErrorAs(t, err, &re)
	assert.ErrorIs(t, err, io.EOF)
	assert.Contains(t, err.Error(), "after 2 attempts")
}
