package jsonstream

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/lib/pq/oid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The wire codec (wirevalue.go, wireerror.go) is proven against lib/pq
// itself: fakePG serves lib/pq the bytes a test chooses, and what lib/pq's
// driver makes of them (driver.Values from rows.Next, column types, the
// Bind it sends, *pq.Errors) must be what the codec makes of the same
// bytes.

// wireZones are the TimeZone values the values are decoded under: UTC and
// an alias lib/pq maps to time.UTC itself, zones with daylight saving
// time, a fractional offset, a name the time zone database does not
// know, a POSIX-style offset, and none at all ("").
var wireZones = []string{"UTC", "Etc/UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Invalid/Zone", "+05", ""}

// wireLoc is the location decode gets for tz: none without a TimeZone.
func wireLoc(tz string) *time.Location {
	if tz == "" {
		return nil
	}
	return timeZoneLocation(tz)
}

// wireOids are every built-in type lib/pq names, then types it does not
// know.
func wireOids() []oid.Oid {
	var o []oid.Oid
	for k := range oid.TypeName {
		o = append(o, k)
	}
	slices.Sort(o)
	return append(o, 0, 1, 42, 99999, math.MaxUint32)
}

// wireTexts are the values every type is decoded from: what the server
// sends for each type, edge cases of each parser, and garbage.
func wireTexts() [][]byte {
	s := []string{
		// Empty and blank; bool.
		"", " ", "t", "f", "true", "false", "T", "F", "yes", "\x00",
		// Integers, their bounds and overflows.
		"0", "1", "-1", "+1", "00", "007", "-0", "+0", "42", "255", "256", "-128",
		"32767", "-32768", "2147483647", "-2147483648", "2147483648",
		"9223372036854775807", "-9223372036854775808", "9223372036854775808",
		"-9223372036854775809", "99999999999999999999", "123456789012345678",
		"-12345678901234567", "+12345678901234567", "1234567890123456789",
		"-123456789012345678", "000000000000000000000000000000000000000001",
		"1_000", "0x10", " 1", "1 ", "1.5", "-", "+", "--1", "+-1", "١٢٣",
		// Floats.
		"3.14159", "-2.5e-10", "1e308", "1e309", "-1e309", "4.9e-324", "1e-400",
		"NaN", "nan", "Infinity", "-Infinity", "inf", "-inf", "+Inf", "0.1",
		"1.7976931348623157e308", "0x1p-2", "1e", ".5", "5.", "1,5",
		"0.30000000000000004441", "3.4028235e+38", "12345678901234567890123456789012345.5",
		// Text.
		"hello", "héllo wörld", "a\x00b", "\xff\xfe", strings.Repeat("x", 100),
		// bytea, hex and escape format, well and badly formed.
		`\x`, `\x00ff10`, `\xDEADbeef`, `\x0`, `\xzz`, `\x 01`, `\\`, `abc\\def`,
		`\000\001\377`, `\400`, `\999`, `\12`, `\1`, `\`, `abc\`, `\x\x`, `\\x41`,
		`\101\102C`, `\08a`, `a\\\\b\\`,
		// Timestamps, dates and their edges.
		"2001-02-03 04:05:06", "2001-02-03 04:05:06.123456", "2001-02-03 04:05:06.1",
		"2001-02-03 04:05:06+01", "2001-02-03 04:05:06.123456+01", "2001-02-03 04:05:06-07:30",
		"2001-02-03 04:05:06+05:30:15", "2001-02-03 04:05:06Z", "2001-02-03", "0001-01-01",
		"0001-12-31 BC", "0044-03-15 12:00:00 BC", "0044-03-15 12:00:00+00 BC",
		"0044-03-15 12:00:00.5-01 BC", "10000-01-01 00:00:00", "294276-12-31 23:59:59.999999+00",
		"4713-01-01 00:00:00+00 BC", "5874897-12-31", "2024-03-31 02:30:00+01",
		"2024-10-27 02:30:00+01", "2024-10-27 02:30:00+02", "2024-07-01 12:00:00+02",
		"2024-07-01 12:00:00-04", "2024-01-01 12:00:00-05", "2024-01-01 12:00:00+05:30",
		"2024-01-01 12:00:00+05", "1883-11-18 12:00:00-04:56:02", "1883-11-18 12:00:00-05",
		"1893-04-01 00:00:00+00:53:28", "2001-02-03 04:05:06.1234567890",
		"2001-02-03 04:05:06.12345678901234567890123", "2001-02-3", "2001-2-03",
		"2001-02-03 04:05", "2001-02-03 04:05:06 BC", "2001-02-03 04:05:06 B",
		"infinity", "-infinity", "Infinity ", "+infinity", "epoch", "2001-02-30",
		"2001-13-01", "2001-02-03 25:00:00", "2001-02-03 24:00:00", "2001-02-03T04:05:06",
		"2001-02-03 04:05:06+0100", "2001-02-03 04:05:06+", "2001-02-03 04:05:06-",
		"2001-02-03 04:05:06.+01", "-2001-02-03", "2001--02-03", "BC", " BC",
		"2001-02-03 04:05:06+01:30:", "2001-02-03 04:05:06+1",
		// Times, 24:00:00, time zones of timetz.
		"04:05:06", "04:05:06.789", "04:05:06.123456", "24:00:00", "24:00:00+08",
		"24:00:00-08:01:01", "00:00:00", "23:59:59.999999", "04:05:06+00", "04:05:06+08",
		"04:05:06-08", "04:05:06+08:30", "04:05:06+08:30:40", "23:00:00.112321+02:12:13",
		"04:05", "4:05:06", "04:05:06 PM", "25:00:00", "04:60:00", "24:00:01", "24:00:00.5",
		"24:00:00+", "12:34:56:78", "::", "24:00:00+25",
		// Other types' texts.
		"{1,2,3}", `{"a",NULL}`, "(1,2)", "[1,2)", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		`{"json": true}`, "1 day 02:03:04", "(0,0),(1,1)", "192.168.0.1/24",
		"08:00:2b:01:02:03", "101", "12.50", "-1234567890.0987654321", "$1,000.00",
		"garbage",
	}
	out := make([][]byte, len(s))
	for i, v := range s {
		out[i] = []byte(v)
	}
	return out
}

// decoded is one value as a decoder gave it.
type decoded struct {
	v        driver.Value
	err      error
	panicked any // what lib/pq panicked with, if it did
}

// copyValue is v with a []byte copied (keeping nil a nil), since lib/pq's
// slices alias its read buffer until the next row.
func copyValue(v driver.Value) driver.Value {
	if b, ok := v.([]byte); ok && b != nil {
		return append(make([]byte, 0, len(b)), b...)
	}
	return v
}

// libpqDecode has lib/pq decode vals (nil for NULL) as rows of one column
// col and returns what each rows.Next gave. When lib/pq panics, the
// result holds the panic alone.
func libpqDecode(tb testing.TB, srv *fakePG, db *sql.DB, col pgCol, vals [][]byte) (out []decoded) {
	tb.Helper()
	rows := make([][][]byte, len(vals))
	for i, v := range vals {
		rows[i] = [][]byte{v}
	}
	srv.script("values", &pgScript{cols: []pgCol{col}, rows: rows})
	defer func() {
		if r := recover(); r != nil {
			out = []decoded{{panicked: r}}
		}
	}()
	err := onDriverConn(tb, db, func(dc driver.Conn) error {
		r, err := dc.(driver.QueryerContext).QueryContext(context.Background(), "values", nil)
		if err != nil {
			return err
		}
		defer r.Close()
		dest := make([]driver.Value, 1)
		for range vals {
			dest[0] = "unset"
			err := r.Next(dest)
			out = append(out, decoded{v: copyValue(dest[0]), err: err})
		}
		if err := r.Next(dest); !errors.Is(err, io.EOF) {
			return fmt.Errorf("after the rows: %w", err)
		}
		return nil
	})
	require.NoError(tb, err)
	return out
}

// wireDecode is what the codec makes of v (nil for NULL) as the wire mode
// calls it: only for non-NULL values, on a buffer of its own.
func wireDecode(col pgCol, loc *time.Location, v []byte) decoded {
	if v == nil {
		return decoded{}
	}
	f := &pgField{name: col.name, oid: col.oid, size: col.size, mod: col.mod}
	got, err := f.decode(loc, append(make([]byte, 0, len(v)), v...))
	return decoded{v: copyValue(got), err: err}
}

// sameValue is whether two driver.Values are the same: floats to the bit
// (NaN and -0 included), times deeply and in a location of the same name,
// everything else deeply (a nil []byte is not an empty one).
func sameValue(a, b driver.Value) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && math.Float64bits(x) == math.Float64bits(y)
	case time.Time:
		y, ok := b.(time.Time)
		return ok && reflect.DeepEqual(x, y) && x.Location().String() == y.Location().String()
	}
	return reflect.DeepEqual(a, b)
}

// requireSameDecode fails unless the codec's result is lib/pq's.
func requireSameDecode(tb testing.TB, what string, lib, wire decoded) {
	tb.Helper()
	if !sameValue(lib.v, wire.v) {
		tb.Fatalf("%s: value differs:\nlib/pq: %#v\nwire:   %#v", what, lib.v, wire.v)
	}
	if !reflect.DeepEqual(lib.err, wire.err) || fmt.Sprint(lib.err) != fmt.Sprint(wire.err) {
		tb.Fatalf("%s: error differs:\nlib/pq: %#v\nwire:   %#v", what, lib.err, wire.err)
	}
}

func TestWireDecodeMatchesLibpq(t *testing.T) {
	texts := append(wireTexts(), nil) // and a NULL
	for _, tz := range wireZones {
		t.Run("tz="+tz, func(t *testing.T) {
			srv := newFakePG(t, tz)
			db := srv.open(t, nil)
			loc := wireLoc(tz)
			for _, o := range wireOids() {
				vals := texts
				if o == oid.T_bool {
					// lib/pq panics on an empty bool; TestWireDecodeEmptyBool.
					vals = slices.DeleteFunc(slices.Clone(texts), func(b []byte) bool { return b != nil && len(b) == 0 })
				}
				col := pgCol{name: "c", oid: o, size: -1, mod: -1}
				lib := libpqDecode(t, srv, db, col, vals)
				require.Len(t, lib, len(vals), "oid %d", o)
				for i, v := range vals {
					requireSameDecode(t, fmt.Sprintf("oid %d (%s) %q", o, oid.TypeName[o], v), lib[i], wireDecode(col, loc, v))
				}
			}
		})
	}
}

func TestWireDecodeEmptyBool(t *testing.T) {
	srv := newFakePG(t, "UTC")
	db := srv.open(t, nil)
	col := pgCol{name: "b", oid: oid.T_bool, size: 1, mod: -1}
	lib := libpqDecode(t, srv, db, col, [][]byte{{}})
	require.NotNil(t, lib[0].panicked, "lib/pq decoded an empty bool: %#v; decode should too", lib[0])
	got := wireDecode(col, nil, []byte{})
	assert.Nil(t, got.v)
	assert.Equal(t, errEmptyBool, got.err)
	// The pool's next connection works: the panicking one was discarded.
	lib = libpqDecode(t, srv, db, col, [][]byte{[]byte("t")})
	assert.Equal(t, true, lib[0].v)
}

func TestWireDecodeAliasing(t *testing.T) {
	in := []byte("abc")
	for _, o := range []oid.Oid{oid.T_numeric, oid.T_json, oid.T_uuid, 99999} {
		v, err := (&pgField{oid: o}).decode(nil, in)
		require.NoError(t, err)
		b := v.([]byte)
		assert.Same(t, &in[0], &b[0], "oid %d: lib/pq hands out its buffer", o)
	}
	v, err := (&pgField{oid: oid.T_bytea}).decode(nil, in)
	require.NoError(t, err)
	assert.NotSame(t, &in[0], &v.([]byte)[0], "bytea is a new slice")
	// An empty value is an empty slice, never nil, even from a nil b.
	v, err = (&pgField{oid: oid.T_json}).decode(nil, nil)
	require.NoError(t, err)
	assert.Equal(t, []byte{}, v)
	// "infinity" is a copy, which the caller may keep.
	inf := []byte("infinity")
	v, err = (&pgField{oid: oid.T_timestamp}).decode(nil, inf)
	require.NoError(t, err)
	inf[0] = 'X'
	assert.Equal(t, []byte("infinity"), v)
}

func TestWireTimeZoneLocation(t *testing.T) {
	for _, n := range utcNames {
		assert.Same(t, time.UTC, timeZoneLocation(n), n)
	}
	assert.Nil(t, timeZoneLocation("Invalid/Zone"))
	assert.Nil(t, timeZoneLocation("Invalid/Zone"), "cached")
	b := timeZoneLocation("Europe/Berlin")
	require.NotNil(t, b)
	assert.Equal(t, "Europe/Berlin", b.String())
	assert.Same(t, b, timeZoneLocation("Europe/Berlin"), "cached")
	assert.Same(t, time.Local, timeZoneLocation("Local"))
}

func TestWireColumnTypesMatchLibpq(t *testing.T) {
	srv := newFakePG(t, "UTC")
	db := srv.open(t, nil)
	mods := []int32{-1, 0, 1, 3, 4, 5, 14, (10<<16 | 2) + 4, (1000<<16 | 1000) + 4, 4 + 65535, math.MaxInt32, math.MinInt32, -5}
	sizes := []int16{-1, -2, 1, 4, 8, 16, math.MinInt16}
	var cols []pgCol
	for _, o := range wireOids() {
		for i, m := range mods {
			cols = append(cols, pgCol{name: "c" + strconv.Itoa(len(cols)), oid: o, size: sizes[i%len(sizes)], mod: m})
		}
	}
	srv.script("types", &pgScript{cols: cols})
	err := onDriverConn(t, db, func(dc driver.Conn) error {
		r, err := dc.(driver.QueryerContext).QueryContext(context.Background(), "types", nil)
		if err != nil {
			return err
		}
		defer r.Close()
		for i, c := range cols {
			f := &pgField{name: c.name, oid: c.oid, size: c.size, mod: c.mod}
			what := fmt.Sprintf("oid %d mod %d", c.oid, c.mod)
			require.Equal(t, c.name, r.Columns()[i])
			require.Equal(t, r.(driver.RowsColumnTypeScanType).ColumnTypeScanType(i), f.scanType(), what)
			require.Equal(t, r.(driver.RowsColumnTypeDatabaseTypeName).ColumnTypeDatabaseTypeName(i), f.databaseTypeName(), what)
			l, ok := r.(driver.RowsColumnTypeLength).ColumnTypeLength(i)
			wl, wok := f.length()
			require.Equal(t, []any{l, ok}, []any{wl, wok}, what)
			p, s, ok := r.(driver.RowsColumnTypePrecisionScale).ColumnTypePrecisionScale(i)
			wp, ws, wok := f.precisionScale()
			require.Equal(t, []any{p, s, ok}, []any{wp, ws, wok}, what)
		}
		return nil
	})
	require.NoError(t, err)
}

// wireArgs are the argument values encodeArg is compared on: what lib/pq
// encodes and a few types it refuses.
func wireArgs() []driver.Value {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		panic(err)
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		panic(err)
	}
	odd := time.FixedZone("ODD", -(7*3600 + 30*60 + 9))
	return []driver.Value{
		nil,
		int64(0), int64(-1), int64(42), int64(math.MaxInt64), int64(math.MinInt64),
		float64(0), math.Copysign(0, -1), 1.5, -2.25e-300, 1e300, 0.1, 1e21, 123456789.125,
		math.NaN(), math.Inf(1), math.Inf(-1), math.MaxFloat64, math.SmallestNonzeroFloat64,
		[]byte(nil), []byte{}, []byte("abc"), []byte{0, 0xff, '\\', 'x'}, []byte(`\x41`),
		"", "hello", "héllo", `\x41`, "a\x00b", "{1,2}",
		true, false,
		time.Date(2001, 2, 3, 4, 5, 6, 123456789, time.UTC),
		time.Date(2001, 2, 3, 4, 5, 6, 0, berlin),
		time.Date(2024, 7, 1, 12, 0, 0, 1000, berlin),
		time.Date(2024, 1, 1, 12, 0, 0, 0, ny),
		time.Date(1800, 1, 1, 12, 0, 0, 0, ny), // local mean time, -4:56:02
		time.Date(2001, 2, 3, 4, 5, 6, 0, odd),
		time.Date(2001, 2, 3, 4, 5, 6, 0, time.FixedZone("", 3600+30)),
		time.Date(2001, 2, 3, 4, 5, 6, 0, time.FixedZone("", 0)),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(0, 2, 3, 4, 5, 6, 123, time.UTC),
		time.Date(-1, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(-4713, 11, 24, 0, 0, 0, 0, berlin),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(294277, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Time{},
		time.Unix(0, 0),
		time.Now(),
		earliestTime,
		// Refused: lib/pq encodes only the driver.Value types.
		int(5), uint64(7), struct{}{}, []string{"a"},
	}
}

// wireParamTypes are the parameter types the arguments are bound to.
var wireParamTypes = []oid.Oid{oid.T_bytea, oid.T_text, 0, oid.T_unknown, oid.T_int4, oid.T_timestamptz, oid.T_varchar, oid.T_bool, oid.T_json}

// libpqBind has lib/pq send v as the parameter of type typ and returns
// the value its Bind carried (nil: NULL), or its error.
func libpqBind(tb testing.TB, srv *fakePG, db *sql.DB, q string, v driver.Value, typ oid.Oid) ([]byte, error) {
	tb.Helper()
	srv.script(q, &pgScript{params: []oid.Oid{typ}})
	err := onDriverConn(tb, db, func(dc driver.Conn) error {
		_, err := dc.(driver.ExecerContext).ExecContext(context.Background(), q, []driver.NamedValue{{Ordinal: 1, Value: v}})
		return err
	})
	vals, ok := srv.bound(q)
	if err != nil {
		require.False(tb, ok, "lib/pq failed after its Bind: %v", err)
		return nil, err
	}
	require.True(tb, ok, "no Bind")
	require.Len(tb, vals, 1)
	return vals[0], nil
}

// requireSameBind fails unless encodeArg(v, typ) is lib/pq's Bind value:
// the same bytes, NULL for NULL, and the same error.
func requireSameBind(tb testing.TB, srv *fakePG, db *sql.DB, q string, v driver.Value, typ oid.Oid) {
	tb.Helper()
	lib, libErr := libpqBind(tb, srv, db, q, v, typ)
	wire, wireErr := encodeArg(v, typ)
	what := fmt.Sprintf("%T %#v as oid %d", v, v, typ)
	require.Equal(tb, fmt.Sprint(libErr), fmt.Sprint(wireErr), what)
	require.Equal(tb, lib == nil, wire == nil, "%s: NULL-ness: lib/pq %q, wire %q", what, lib, wire)
	require.True(tb, bytes.Equal(lib, wire), "%s:\nlib/pq: %q\nwire:   %q", what, lib, wire)
}

func TestWireEncodeMatchesLibpq(t *testing.T) {
	srv := newFakePG(t, "Europe/Berlin")
	db := srv.open(t, nil)
	for i, v := range wireArgs() {
		for _, typ := range wireParamTypes {
			requireSameBind(t, srv, db, fmt.Sprintf("args %d %d", i, typ), v, typ)
		}
	}
}

func TestWireEncodeAliasing(t *testing.T) {
	in := []byte("abc")
	got, err := encodeArg(in, oid.T_text)
	require.NoError(t, err)
	assert.Same(t, &in[0], &got[0], "lib/pq sends a []byte as it is")
	got, err = encodeArg("", oid.T_text)
	require.NoError(t, err)
	assert.NotNil(t, got, "an empty string is an empty value, not NULL")
	got, err = encodeArg([]byte{}, oid.T_bytea)
	require.NoError(t, err)
	assert.Equal(t, []byte(`\x`), got)
}

// wireErrorBodies are ErrorResponse bodies: every field, a few positions
// (in range, past the end, malformed), none, duplicates, unknown fields.
func wireErrorBodies() [][]byte {
	all := []string{
		"SERROR", "VERROR", "C22P02", "Minvalid input syntax for type json",
		"DToken \"asd\" is invalid.\nsecond line", "HSome hint", "p3", "qSELECT internal",
		"WPL/pgSQL function f() line 3", "spublic", "tmytable", "cmycol", "dmytype",
		"nmyconstraint", "Fjsonfuncs.c", "L646", "Rreport_parse_error", "Xunknown field",
	}
	var out [][]byte
	for _, pos := range []string{"", "1", "8", "12", "20", "33", "1000", "0", "-3", "abc", " 5"} {
		f := slices.Clone(all)
		if pos != "" {
			f = append(f, "P"+pos)
		}
		out = append(out, errorBody(f...))
	}
	return append(out,
		errorBody("SERROR", "C42601", `Msyntax error at or near "FORM"`, "P10"),
		errorBody("SERROR", "C42601", "Mfirst", "Msecond", "P2", "P3"),
		errorBody("Mno severity, no code"),
		append(errorBody(), 0, 0, 0), // no fields; lib/pq reads a body under 4 bytes as text
		append(errorBody("SERROR", "C00000", "Mtrailing bytes", "P1"), "junk\x00"...),
		errorBody("SОШИБКА", "VERROR", "C22012", "Mделение на ноль", "P4"),
	)
}

// wireQueries are query texts for the errors' positions: one line, lines
// with tabs, multi-byte characters.
var wireQueries = []string{
	"SELECT 1",
	"SELECT\n  'abc',\n\t'def'::jsonb,\n\t\t123\nFROM t",
	"SELECT 'ü€𝄞', x FROM t\nWHERE y = 1",
	"\n\n\nSELECT",
}

// libpqError has lib/pq run q against a server that answers with body,
// with an argument (the extended protocol) or without, or after a row,
// and returns the error lib/pq returns.
func libpqError(tb testing.TB, srv *fakePG, db *sql.DB, q string, body []byte, path string) error {
	tb.Helper()
	sc := &pgScript{err: body, params: []oid.Oid{oid.T_text}}
	if path == "rows" {
		sc = &pgScript{cols: []pgCol{{name: "c", oid: oid.T_text, size: -1, mod: -1}}, rows: [][][]byte{{[]byte("x")}}, rowErr: body}
	}
	srv.script(q, sc)
	return onDriverConn(tb, db, func(dc driver.Conn) error {
		var args []driver.NamedValue
		if path == "extended" {
			args = []driver.NamedValue{{Ordinal: 1, Value: "a"}}
		}
		r, err := dc.(driver.QueryerContext).QueryContext(context.Background(), q, args)
		if err != nil {
			return err
		}
		defer r.Close()
		dest := make([]driver.Value, 1)
		for {
			if err := r.Next(dest); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	})
}

// errorText is f's text, or what it panicked with.
func errorText(f func() string) (s string) {
	defer func() {
		if r := recover(); r != nil {
			s = fmt.Sprint("panic: ", r)
		}
	}()
	return f()
}

// requireSameError fails unless wire is lib/pq's error: every field,
// the query it keeps, Error and ErrorWithDetail.
func requireSameError(tb testing.TB, what string, libErr error, wire *pq.Error) {
	tb.Helper()
	var lib *pq.Error
	if !errors.As(libErr, &lib) {
		tb.Fatalf("%s: lib/pq returned %#v", what, libErr)
	}
	if !reflect.DeepEqual(lib, wire) {
		tb.Fatalf("%s:\nlib/pq: %#v\nwire:   %#v", what, lib, wire)
	}
	require.Equal(tb, errorText(lib.Error), errorText(wire.Error), what)
	require.Equal(tb, errorText(lib.ErrorWithDetail), errorText(wire.ErrorWithDetail), what)
}

func TestWireServerErrorMatchesLibpq(t *testing.T) {
	srv := newFakePG(t, "UTC")
	db := srv.open(t, nil)
	for _, q := range wireQueries {
		for i, body := range wireErrorBodies() {
			for _, path := range []string{"simple", "extended", "rows"} {
				what := fmt.Sprintf("%s: body %d: %q", path, i, q)
				libErr := libpqError(t, srv, db, q, body, path)
				query := q
				if path == "rows" {
					query = "" // lib/pq keeps no query for an error of rows.Next
				}
				requireSameError(t, what, libErr, serverError(body, query))
			}
		}
	}
}

func TestWireServerErrorFatal(t *testing.T) {
	srv := newFakePG(t, "UTC")
	db := srv.open(t, nil)
	body := errorBody("SFATAL", "VFATAL", "C57P01", "Mterminating connection due to administrator command")
	err := libpqError(t, srv, db, "SELECT 1", body, "simple")
	require.ErrorIs(t, err, driver.ErrBadConn, "lib/pq reports a FATAL error as a bad connection")
	assert.True(t, serverError(body, "SELECT 1").Fatal())
}

func TestWireServerErrorNotice(t *testing.T) {
	srv := newFakePG(t, "UTC")
	var notices []*pq.Error
	db := srv.open(t, func(e *pq.Error) { notices = append(notices, e) })
	for i, body := range wireErrorBodies() {
		q := fmt.Sprintf("SELECT %d", i)
		srv.script(q, &pgScript{notice: body})
		err := onDriverConn(t, db, func(dc driver.Conn) error {
			r, err := dc.(driver.QueryerContext).QueryContext(context.Background(), q, nil)
			if err == nil {
				err = r.Close()
			}
			return err
		})
		require.NoError(t, err)
		require.Len(t, notices, i+1)
		requireSameError(t, q, notices[i], serverError(body, ""))
	}
}

func TestWireServerErrorQueryField(t *testing.T) {
	require.NotNil(t, errorQueryField(), "pq.Error has no query string field: serverError cannot attach the query; see setErrorQuery")
	e := serverError(errorBody("SERROR", "C42601", "Mbad", "P8"), "SELECT x")
	assert.Equal(t, "pq: bad at column 8 (42601)", e.Error())
	e = serverError(errorBody("SERROR", "C42601", "Mbad", "P8"), "")
	assert.Equal(t, "pq: bad (42601)", e.Error())
}

func TestWireServerErrorMalformed(t *testing.T) {
	// lib/pq panics on these; serverError keeps what it read.
	e := serverError([]byte("SERROR\x00C42601\x00Mcut"), "q")
	assert.Equal(t, "ERROR", e.Severity)
	assert.Equal(t, "42601", string(e.Code))
	assert.Equal(t, "", e.Message)
	assert.Equal(t, &pq.Error{}, serverError(nil, ""))
}

// wireInfinityEnv marks the test binary run by TestWireInfinityTs to
// enable pq.EnableInfinityTs, which no process can undo.
const wireInfinityEnv = "JSONSTREAM_TEST_WIRE_INFINITY_TS"

// TestWireInfinityTs compares decode and encodeArg with lib/pq before and
// after pq.EnableInfinityTs. lib/pq can enable it only once (a second call
// panics) and never disable it, so the test runs in a child process and
// the other tests keep lib/pq's default.
func TestWireInfinityTs(t *testing.T) {
	if os.Getenv(wireInfinityEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWireInfinityTs$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), wireInfinityEnv+"=1")
		out, err := cmd.CombinedOutput()
		tail := out[max(0, len(out)-4000):]
		require.NoError(t, err, "%s", tail)
		require.Contains(t, string(out), "both states checked", "%s", tail)
		return
	}

	const tz = "Europe/Berlin"
	srv := newFakePG(t, tz)
	db := srv.open(t, nil)
	loc := timeZoneLocation(tz)
	texts := [][]byte{[]byte("-infinity"), []byte("infinity"), []byte("2001-02-03 04:05:06+01"), nil}
	decodeAll := func() []decoded {
		var got []decoded
		for _, o := range []oid.Oid{oid.T_timestamp, oid.T_timestamptz, oid.T_date} {
			col := pgCol{name: "t", oid: o, size: 8, mod: -1}
			lib := libpqDecode(t, srv, db, col, texts)
			for i, v := range texts {
				wire := wireDecode(col, loc, v)
				requireSameDecode(t, fmt.Sprintf("oid %d %q", o, v), lib[i], wire)
				got = append(got, wire)
			}
		}
		return got
	}
	n := 0
	bind := func(v time.Time) {
		for _, typ := range []oid.Oid{oid.T_timestamptz, oid.T_text, 0} {
			n++
			requireSameBind(t, srv, db, "infinity args "+strconv.Itoa(n), v, typ)
		}
	}

	// Not enabled: the texts, the times lib/pq's formatting.
	got := decodeAll()
	assert.Equal(t, []byte("-infinity"), got[0].v)
	for _, v := range wireArgs() {
		if tv, ok := v.(time.Time); ok {
			bind(tv)
		}
	}
	require.Nil(t, infinityTs.bounds.Load())

	neg := time.Date(-100, 1, 1, 0, 0, 0, 0, time.FixedZone("WEIRD", 3600+7))
	pos := time.Now().Add(100 * 365 * 24 * time.Hour) // with a monotonic reading
	pq.EnableInfinityTs(neg, pos)
	require.Panics(t, func() { pq.EnableInfinityTs(neg, pos) }, "lib/pq enables it once")

	// Enabled, the bounds unknown: lib/pq formats the time itself.
	bind(time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC))
	require.Nil(t, infinityTs.bounds.Load())
	// A time at a bound makes the codec learn them.
	bind(neg)
	require.NotNil(t, infinityTs.bounds.Load())
	for _, v := range append(wireArgs(), neg.Add(-1), neg.Add(1), pos.Add(-1), pos, pos.Add(1)) {
		if tv, ok := v.(time.Time); ok {
			bind(tv)
		}
	}
	got = decodeAll()
	assert.True(t, got[0].v == driver.Value(neg), "the very time.Time: %#v", got[0].v)
	assert.True(t, got[1].v == driver.Value(pos), "the very time.Time, monotonic reading too: %#v", got[1].v)
	t.Log("both states checked")
}

// wireDecodedOids are the types lib/pq's textDecode decodes; every other
// type it passes through.
var wireDecodedOids = []oid.Oid{oid.T_char, oid.T_bpchar, oid.T_varchar, oid.T_text, oid.T_bytea,
	oid.T_timestamptz, oid.T_timestamp, oid.T_date, oid.T_time, oid.T_timetz, oid.T_bool,
	oid.T_int8, oid.T_int4, oid.T_int2, oid.T_float4, oid.T_float8}

// FuzzWireDecode compares decode with lib/pq on any text of any type
// under any of wireZones. An even oi picks among wireDecodedOids, where
// the parsers are, an odd one among all of wireOids. Each zone's server
// and connection last for the whole fuzzing process.
func FuzzWireDecode(f *testing.F) {
	oids := wireOids()
	pick := func(oi uint16) oid.Oid {
		if oi%2 == 0 {
			return wireDecodedOids[int(oi/2)%len(wireDecodedOids)]
		}
		return oids[int(oi/2)%len(oids)]
	}
	type server struct {
		srv *fakePG
		db  *sql.DB
		loc *time.Location
	}
	servers := make([]server, len(wireZones))
	for i, tz := range wireZones {
		srv := newFakePG(f, tz)
		servers[i] = server{srv: srv, db: srv.open(f, nil), loc: wireLoc(tz)}
	}
	for i, v := range wireTexts() {
		for k := range wireDecodedOids {
			f.Add(uint16(2*k), uint8(i+k), v)
		}
		f.Add(uint16(2*(i%len(oids))+1), uint8(i), v)
	}
	f.Fuzz(func(t *testing.T, oi uint16, zi uint8, b []byte) {
		if b == nil {
			b = []byte{} // a non-NULL value
		}
		o := pick(oi)
		s := servers[int(zi)%len(servers)]
		col := pgCol{name: "c", oid: o, size: -1, mod: -1}
		lib := libpqDecode(t, s.srv, s.db, col, [][]byte{b})
		wire := wireDecode(col, s.loc, b)
		if lib[0].panicked != nil {
			if o == oid.T_bool && len(b) == 0 && errors.Is(wire.err, errEmptyBool) {
				return
			}
			t.Fatalf("lib/pq panicked on oid %d %q: %v; decode gave %#v", o, b, lib[0].panicked, wire)
		}
		requireSameDecode(t, fmt.Sprintf("oid %d (%s) %q under %q", o, oid.TypeName[o], b, wireZones[int(zi)%len(servers)]), lib[0], wire)
	})
}

// FuzzWireError compares serverError with lib/pq on any ErrorResponse
// body after any simple query text.
func FuzzWireError(f *testing.F) {
	srv := newFakePG(f, "UTC")
	db := srv.open(f, nil)
	for _, q := range wireQueries {
		for _, body := range wireErrorBodies() {
			f.Add(body, q)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, q string) {
		q = strings.ReplaceAll(q, "\x00", "") // a query text ends at its first zero byte
		for len(body) < 4 {
			body = append(body, 0) // lib/pq reads a shorter body as unframed text
		}
		body = body[:min(len(body), 30000)]
		defer srv.forget(q)
		var libErr error
		var panicked any
		func() {
			defer func() { panicked = recover() }()
			libErr = libpqError(t, srv, db, q, body, "simple")
		}()
		wire := serverError(body, q)
		switch {
		case panicked != nil:
			// A body lib/pq cannot parse; serverError did not panic.
		case errors.Is(libErr, driver.ErrBadConn):
			require.True(t, wire.Fatal(), "lib/pq saw a FATAL error: %#v", wire)
		default:
			requireSameError(t, fmt.Sprintf("%q after %q", body, q), libErr, wire)
		}
	})
}

// BenchmarkDecode compares decode with the naive path, lib/pq's
// textDecode as it is (libpqTextDecode), per type.
func BenchmarkDecode(b *testing.B) {
	for _, c := range wireBenchCases {
		f := &pgField{oid: c.oid}
		in := []byte(c.text)
		b.Run(c.name+"/wire", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, err := f.decode(c.loc, in); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/naive", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, err := libpqTextDecode(c.loc, in, c.oid); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// wireBenchCases are the values of BenchmarkDecode and
// TestWireDecodeAllocs, one per decoding path.
var wireBenchCases = []struct {
	name string
	oid  oid.Oid
	text string
	loc  *time.Location
}{
	{"int8", oid.T_int8, "1234567890", nil},
	{"int4small", oid.T_int4, "42", nil},
	{"int8long", oid.T_int8, "-9223372036854775808", nil},
	{"float8", oid.T_float8, "3.141592653589793", nil},
	{"float8long", oid.T_float8, "0.000000000000000000000000000000001234", nil},
	{"bool", oid.T_bool, "t", nil},
	{"text", oid.T_text, "hello, world", nil},
	{"text100", oid.T_text, strings.Repeat("x", 100), nil},
	{"numeric", oid.T_numeric, "12345.678", nil},
	{"bytea", oid.T_bytea, `\x0102030405060708090a`, nil},
	{"timestamptz", oid.T_timestamptz, "2024-01-02 03:04:05.123456+01", time.UTC},
	{"timestamp", oid.T_timestamp, "2024-01-02 03:04:05.123456", nil},
	{"date", oid.T_date, "2024-01-02", nil},
	{"time", oid.T_time, "03:04:05.123456", nil},
}

func TestWireDecodeAllocs(t *testing.T) {
	for _, c := range wireBenchCases {
		f := &pgField{oid: c.oid}
		in := []byte(c.text)
		wire := testing.AllocsPerRun(200, func() { _, _ = f.decode(c.loc, in) })
		naive := testing.AllocsPerRun(200, func() { _, _ = libpqTextDecode(c.loc, in, c.oid) })
		assert.LessOrEqual(t, wire, naive, "%s: allocations per value", c.name)
	}
}

// libpqTextDecode is lib/pq's textDecode (encode.go, lib/pq v1.12.3, MIT
// License, Copyright (c) 2011-2013, 'pq' Contributors) as it is, with
// EnableInfinityTs never called: the naive path BenchmarkDecode compares
// decode with.
func libpqTextDecode(loc *time.Location, s []byte, typ oid.Oid) (any, error) {
	switch typ {
	case oid.T_char, oid.T_bpchar, oid.T_varchar, oid.T_text:
		return string(s), nil
	case oid.T_bytea:
		b, err := parseBytea(s)
		if err != nil {
			err = errors.New("pq: " + err.Error())
		}
		return b, err
	case oid.T_timestamptz:
		return libpqParseTS(loc, string(s))
	case oid.T_timestamp, oid.T_date:
		return libpqParseTS(nil, string(s))
	case oid.T_time, oid.T_timetz:
		return parseTime(typ, string(s))
	case oid.T_bool:
		return s[0] == 't', nil
	case oid.T_int8, oid.T_int4, oid.T_int2:
		i, err := strconv.ParseInt(string(s), 10, 64)
		if err != nil {
			err = errors.New("pq: " + err.Error())
		}
		return i, err
	case oid.T_float4, oid.T_float8:
		f, err := strconv.ParseFloat(string(s), 64)
		if err != nil {
			err = errors.New("pq: " + err.Error())
		}
		return f, err
	}
	return s, nil
}

// libpqParseTS is lib/pq's parseTS with EnableInfinityTs never called.
func libpqParseTS(loc *time.Location, str string) (any, error) {
	switch str {
	case "-infinity", "infinity":
		return []byte(str), nil
	}
	t, err := pq.ParseTimestamp(loc, str)
	if err != nil {
		err = errors.New("pq: " + err.Error())
	}
	return t, err
}
