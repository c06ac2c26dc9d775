package jsonstream

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"testing"

	"github.com/lib/pq"
	"github.com/stretchr/testify/require"
)

// The portal mode decodes values itself (wirevalue.go). These tests hold
// it to lib/pq's results against the server, over every built-in type the
// server has (pg_type): each type's value in a column, in an array, and
// NULL, without arguments (lib/pq's simple Query, all text) and with one
// (lib/pq's extended protocol, which asks for some types in binary), with
// the column types database/sql reports.

// sampleCandidates are the texts tried, in order, as a value of each type:
// the first one the type's input function takes is its sample.
var sampleCandidates = []string{
	"1", "0", "t", "1.5", "-2.25", "a", "abc", "2024-02-29", "2024-02-29 13:14:15.123456+02",
	"13:14:15.5", "13:14:15+05:30", "1 day 02:03:04", "(1,2)", "(0,0),(1,1)", "[(0,0),(1,1)]",
	"((0,0),(1,1),(1,0))", "<(0,0),1>", "{1,2,3}", "[1,2)", "{[1,2)}", `{"a": [1, 2.5, "x"]}`,
	"<a>b</a>", "127.0.0.1", "10.0.0.0/8", "08:00:2b:01:02:03", "08:00:2b:01:02:03:04:05",
	"101", "a & b", "a:1 b:2", "00000000-0000-0000-0000-000000000001", "$1.50", "B",
	"1/1", "0/16B3748", "1:2:", "pg_catalog", "integer", "pg_class", "=", "+", "english",
	"simple", "now", "{}", "",
}

// typeSamples returns, for every type of the server that is not a
// pseudo-type, an array type or a table's row type, a literal of it (or
// "" when no candidate fits) and its name.
func typeSamples(t *testing.T) (names, samples []string) {
	t.Helper()
	db := openPG(t, "postgres", "")
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	ctx := context.Background()
	_, err = conn.ExecContext(ctx, `CREATE FUNCTION pg_temp.sample(t regtype, cands text[]) RETURNS text
		LANGUAGE plpgsql AS $$
		DECLARE c text;
		BEGIN
			FOREACH c IN ARRAY cands LOOP
				BEGIN
					EXECUTE format('SELECT %L::%s', c, t);
					RETURN c;
				EXCEPTION WHEN others THEN
				END;
			END LOOP;
			RETURN NULL;
		END $$`)
	require.NoError(t, err)
	rows, err := conn.QueryContext(ctx, `SELECT format_type(oid, NULL), coalesce(pg_temp.sample(oid::regtype, $1), '')
		FROM pg_type
		WHERE typtype IN ('b', 'e', 'r', 'm', 'd') AND typisdefined AND typcategory <> 'A'
			AND typname NOT LIKE 'pg\_%' ESCAPE '\' OR typname IN ('pg_lsn', 'pg_snapshot', 'pg_node_tree')
		ORDER BY oid`, pq.Array(sampleCandidates))
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var name, sample string
		require.NoError(t, rows.Scan(&name, &sample))
		names = append(names, name)
		samples = append(samples, sample)
	}
	require.NoError(t, rows.Err())
	return names, samples
}

// describeRows reads every row of rows as driver values (through
// sql.RawBytes-free scanning into any) with the column types, as one
// comparable value.
func describeRows(t *testing.T, rows *sql.Rows) []any {
	t.Helper()
	types, err := rows.ColumnTypes()
	require.NoError(t, err)
	var out []any
	for _, ct := range types {
		length, lok := ct.Length()
		p, s, pok := ct.DecimalSize()
		out = append(out, fmt.Sprintf("%s %s %v/%v %v/%v/%v %v", ct.Name(), ct.DatabaseTypeName(), length, lok, p, s, pok, ct.ScanType()))
	}
	values := scanAll(t, rows)
	for _, row := range values {
		for i, v := range row {
			if f, ok := v.(float64); ok && math.IsNaN(f) {
				row[i] = "NaN" // which never equals itself
			}
		}
	}
	return append(out, values)
}

func TestPortalValuesOverEveryType(t *testing.T) {
	names, samples := typeSamples(t)
	sampled := 0
	for _, s := range samples {
		if s != "" {
			sampled++
		}
	}
	t.Logf("%d types, %d with a sample value", len(names), sampled)
	require.Greater(t, sampled, len(names)*3/4, "most types should take a candidate")
	bothIn(t, []string{portalDSN}, func(t *testing.T, db *sql.DB) []any {
		db.SetMaxOpenConns(1)
		var out []any
		query := func(q string, args ...any) {
			rows, err := db.Query(q, args...)
			if err != nil {
				out = append(out, "error: "+err.Error())
				return
			}
			out = append(out, describeRows(t, rows))
		}
		for i, name := range names {
			if samples[i] == "" {
				query(fmt.Sprintf("SELECT NULL::%s AS n", name))
				continue
			}
			lit := pq.QuoteLiteral(samples[i])
			query(fmt.Sprintf("SELECT %s::%s AS v, ARRAY[%[1]s::%[2]s, NULL] AS a, NULL::%[2]s AS n", lit, name))
			// With an argument: lib/pq asks for bytea, integers and uuid
			// in binary, the portal for everything in text.
			query(fmt.Sprintf("SELECT $1::%s AS v", name), samples[i])
		}
		return out
	})
}

// TestPortalSpecialValues: the values whose text forms lib/pq treats
// apart: infinities, NaN, 24:00, time zones with offsets, bytea in both
// output formats, empty and NULL values, large and negative numbers.
func TestPortalSpecialValues(t *testing.T) {
	exprs := []string{
		"'infinity'::timestamptz", "'-infinity'::timestamptz", "'infinity'::timestamp", "'-infinity'::date",
		"'NaN'::float8", "'Infinity'::float4", "'-Infinity'::float8", "'-0'::float8", "'NaN'::numeric",
		"'24:00:00'::time", "'23:59:59.999999+14:59'::timetz", "'0001-01-01 00:00:00 BC'::timestamptz",
		"'1900-01-01 00:00:00+00:19:32'::timestamptz", "'2024-06-01 12:00'::timestamptz AT TIME ZONE 'UTC'",
		"'\\x00ff5c'::bytea", "''::bytea", "'\\x'::bytea", "decode(repeat('ab', 1000), 'hex')",
		"''::text", "'-9223372036854775808'::int8", "'32767'::int2", "'1e308'::float8",
		"'12345678901234567890.123456789'::numeric", "'{}'::int[]", "'{NULL,\"\"}'::text[]",
		"'{{1,2},{3,4}}'::int[]", "'[2024-01-01,infinity)'::daterange", "'{\"a\":null}'::jsonb",
		"'\"\\u0000\"'::json", "repeat('é', 50000)", "E'\\\\'::text", "chr(1)",
	}
	for _, output := range []string{"hex", "escape"} {
		for _, tz := range []string{"UTC", "Europe/Berlin", "America/St_Johns", "+05"} {
			t.Run(output+"/"+tz, func(t *testing.T) {
				bothIn(t, []string{portalDSN}, func(t *testing.T, db *sql.DB) []any {
					db.SetMaxOpenConns(1)
					_, err := db.Exec("SET bytea_output = " + output + "; SET TimeZone = " + pq.QuoteLiteral(tz))
					require.NoError(t, err)
					var out []any
					for _, e := range exprs {
						rows, err := db.Query("SELECT " + e + " AS v")
						require.NoError(t, err, e)
						out = append(out, describeRows(t, rows))
					}
					return out
				})
			})
		}
	}
}

// TestPortalByteaArguments holds the shortcut of start() to lib/pq: a
// string or []byte argument for a bytea parameter is sent as plain text,
// without asking the server for the parameter's type, unless it holds a
// backslash, a NUL or is not UTF-8; either way the server stores what
// lib/pq's hex form stores, or fails as lib/pq does.
func TestPortalByteaArguments(t *testing.T) {
	values := []any{
		"", "abc", "é€", `a\b`, `\x4142`, "\\\\", "a\x00b", string([]byte{0xff, 0xfe}),
		[]byte(nil), []byte{}, []byte("abc"), []byte{0, 1, 2}, []byte{0xff}, []byte(`\x41`), []byte("é"),
	}
	bothIn(t, []string{portalDSN}, func(_ *testing.T, db *sql.DB) []string {
		var out []string
		for _, v := range values {
			for _, q := range []string{
				"SELECT encode($1::bytea, 'hex')",
				"SELECT encode(b, 'hex') FROM (VALUES ($1::bytea)) AS v(b)",
				"SELECT $1 = 'abc'::bytea",
				"SELECT length($1::text)",
			} {
				var s sql.NullString
				err := db.QueryRow(q, v).Scan(&s)
				out = append(out, fmt.Sprintf("%s %q: %v %v", q, v, s, errString(err)))
			}
		}
		return out
	})
}

// TestPortalTextArguments: other arguments as lib/pq encodes them.
func TestPortalTextArguments(t *testing.T) {
	bothIn(t, []string{portalDSN}, func(_ *testing.T, db *sql.DB) []string {
		var out []string
		for _, v := range []any{int64(-5), 1.5, float64(1) / 3, true, "x", nil, sql.NullInt64{}, pq.Array([]int{1, 2})} {
			var s sql.NullString
			err := db.QueryRow("SELECT $1::text", v).Scan(&s)
			out = append(out, fmt.Sprintf("%v: %v %v", v, s, errString(err)))
		}
		return out
	})
}
