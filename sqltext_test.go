package jsonstream

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestScanQuery(t *testing.T) {
	for _, tc := range []struct {
		query                      string
		certain, malformed, writes bool
		statements                 int
		first                      string
		end                        int // -1: the text's length
	}{
		{"SELECT 1", true, false, false, 1, "SELECT", -1},
		{"  select 1 ; ", true, false, false, 1, "select", 11},
		// A write in any statement of the text is a write.
		{"SELECT 1; DELETE FROM victim", true, false, true, 2, "SELECT", 8},
		{"SELECT 1; SET search_path TO x", true, false, true, 2, "SELECT", 8},
		{"SELECT 1; (SELECT 2); VALUES (3)", true, false, false, 3, "SELECT", 8},
		{"SELECT 1) ; DELETE FROM victim; SELECT (1", true, true, false, 1, "SELECT", -1},
		{"WITH d AS (DELETE FROM victim RETURNING 1) SELECT (1", true, true, true, 1, "WITH", -1},
		{"WITH d AS (DELETE FROM victim RETURNING 1) SELECT 1", true, false, true, 1, "WITH", -1},
		{"SELECT ')' , \"a)\" , $$)$$, $q$ ' $q$ -- )\n /* ) /* ) */ ) */ FROM t", true, false, false, 1, "SELECT", -1},
		{"SELECT 'a'';DELETE'", true, false, false, 1, "SELECT", -1},
		{"SELECT E'\\');DELETE FROM v;SELECT ('", true, false, false, 1, "SELECT", -1},
		// A backslash before a quote ends the string under
		// standard_conforming_strings=on and escapes it under off.
		{"SELECT '\\'); DELETE FROM victim; SELECT ('", false, false, true, 2, "SELECT", 12},
		{"SELECT '\\d+' ~ 'a'", true, false, false, 1, "SELECT", -1},
		{"SELECT 'open", true, true, false, 1, "SELECT", -1},
		{"SELECT 1 /* open", true, true, false, 1, "SELECT", -1},
		{"SELECT \"open", true, true, false, 1, "SELECT", -1},
		{"SELECT $tag$ open", true, true, false, 1, "SELECT", -1},
		{"SELECT (1; DELETE FROM victim)", true, true, true, 1, "SELECT", -1},
		{"SELECT a$b$ FROM t", true, false, false, 1, "SELECT", -1},
		{"SELECT $ 1", false, false, false, 1, "SELECT", -1},
		{"SELECT 1 \\g", false, false, false, 1, "SELECT", -1},
		{"SELECT x FROM t FOR UPDATE", true, false, false, 1, "SELECT", -1},
		{"SELECT x FROM t FOR NO KEY UPDATE", true, false, false, 1, "SELECT", -1},
		{"SELECT x INTO new_t FROM t", true, false, true, 1, "SELECT", -1},
		// SELECT … INTO wherever the server looks for it (it refuses it in
		// a subquery, where counting it as a write changes nothing).
		{"WITH a AS (SELECT 1 AS x) SELECT x INTO new_t FROM a", true, false, true, 1, "WITH", -1},
		{"(SELECT 1 INTO new_t) UNION SELECT 2", true, false, true, 1, "(", -1},
		{"SELECT (SELECT x INTO y) FROM t", true, false, true, 1, "SELECT", -1},
		{"UPDATE t SET x = 1 RETURNING x", true, false, true, 1, "UPDATE", -1},
		{"insert into t values (1) returning *", true, false, true, 1, "insert", -1},
		{"MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", true, false, true, 1, "MERGE", -1},
		{"(SELECT 1) UNION (SELECT 2)", true, false, false, 1, "(", -1},
		{"VALUES (1), (2)", true, false, false, 1, "VALUES", -1},
		{"TABLE t", true, false, false, 1, "TABLE", -1},
		{"SHOW work_mem", true, false, false, 1, "SHOW", -1},
		{"EXPLAIN ANALYZE SELECT 1", true, false, true, 1, "EXPLAIN", -1},
		{"SELEC 1", true, false, true, 1, "SELEC", -1},
		{"-- only a comment", true, false, true, 0, "", -1},
		{"", true, false, true, 0, "", -1},
		{";; SELECT 1", true, false, false, 1, "SELECT", -1},
		{"SELECT U&'d\\0061t' , U&\"a)\" , B'01' , X'1F' , N'x'", true, false, false, 1, "SELECT", -1},
		{"SELECT e'it''s \\\\' || 'x'", true, false, false, 1, "SELECT", -1},
		{"SELECT .5, 1e3, 1$a", false, false, false, 1, "SELECT", -1},
		// In SJIS, BIG5 or GBK the backslash is the second byte of a
		// character: the server sees no escape.
		{"SELECT E'\x95\\' ) ; DELETE FROM victim ; SELECT ( $$'--$$", false, false, false, 1, "SELECT", -1},
		{"SELECT '\x95\\\\' ) ; DELETE FROM victim ; SELECT ( '", false, false, false, 1, "SELECT", -1},
		// Conservative: the scan cannot tell where a character starts.
		{"SELECT E'é\\n'", false, false, false, 1, "SELECT", -1},
		{"SELECT E'é \\n'", true, false, false, 1, "SELECT", -1},
	} {
		t.Run(tc.query, func(t *testing.T) {
			got := scanQuery(tc.query)
			end := tc.end
			if end < 0 {
				end = len(tc.query)
			}
			assert.Equal(t, tc.certain, got.certain, "certain")
			if !tc.certain {
				return // the rest are guesses
			}
			assert.Equal(t, tc.malformed, got.malformed, "malformed")
			if tc.malformed {
				return // the server refuses it: nothing more matters
			}
			assert.Equal(t, tc.writes, got.writes, "writes")
			assert.Equal(t, tc.statements, got.statements, "statements")
			assert.Equal(t, tc.first, got.first, "first")
			if !tc.malformed {
				assert.Equal(t, end, got.end, "end")
			}
		})
	}
}

// TestScanQueryLimitedAndSets: a LIMIT, OFFSET or FETCH anywhere in the
// first statement counts (a subquery's rows are counted again in a new
// snapshot too); a SET, RESET or DISCARD begins any statement of the text.
func TestScanQueryLimitedAndSets(t *testing.T) {
	for _, tc := range []struct {
		query         string
		limited, sets bool
	}{
		{"SELECT * FROM t ORDER BY id", false, false},
		{"SELECT * FROM t ORDER BY id LIMIT 10", true, false},
		{"SELECT * FROM (SELECT * FROM t ORDER BY id LIMIT 100) s", true, false},
		{"WITH a AS (SELECT * FROM t OFFSET 5) SELECT * FROM a", true, false},
		{"(SELECT * FROM t FETCH FIRST 3 ROWS ONLY)", true, false},
		{"SELECT 'limit', \"offset\" FROM t -- limit", false, false},
		{"SELECT 1; SELECT 2 LIMIT 1", false, false},
		{"SET search_path TO x", false, true},
		{"SELECT 1; set role r", false, true},
		{"SELECT 1; /* c */ DISCARD ALL", false, true},
		{"SELECT 1; RESET ALL", false, true},
		{"SELECT 'set'; SELECT reset FROM t", false, false},
	} {
		t.Run(tc.query, func(t *testing.T) {
			got := scanQuery(tc.query)
			assert.Equal(t, tc.limited, got.limited, "limited")
			assert.Equal(t, tc.sets, got.sets, "sets")
		})
	}
}

// TestScanQueryLocks: a read that locks the rows it reads, in any
// statement of the text; FOR UPDATE is a lock, UPDATE a write.
func TestScanQueryLocks(t *testing.T) {
	for q, want := range map[string][2]bool{ // locks, writes
		"SELECT * FROM t FOR UPDATE":                         {true, false},
		"SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED":      {true, false},
		"select * from t for share":                          {true, false},
		"SELECT * FROM t FOR KEY SHARE OF t NOWAIT":          {true, false},
		"SELECT 1; SELECT * FROM t FOR UPDATE":               {true, false},
		"SELECT * FROM t":                                    {false, false},
		"SELECT share, \"for\" FROM t":                       {false, false},
		"WITH u AS (UPDATE t SET x = 1 RETURNING x) TABLE u": {false, true},
		// FOR and KEY make a lock of the UPDATE or SHARE right after them,
		// across blanks and comments only.
		"SELECT * FROM t FOR /* a lock */ UPDATE":                               {true, false},
		"SELECT * FROM t FOR NO KEY -- a lock\n UPDATE":                         {true, false},
		"WITH p AS (SELECT id FROM t ORDER BY key) UPDATE t SET n = 1 FROM p":   {false, true},
		"WITH s AS (SELECT substring(a FROM 1 FOR 2)) UPDATE t SET n = 1":       {false, true},
		"WITH p AS (SELECT id FROM t ORDER BY key) SELECT share FROM p":         {false, false},
		"WITH p AS (SELECT substring(a FROM 1 FOR 2) AS v) SELECT 'x' share":    {false, false},
		"WITH p AS (SELECT 1 FOR UPDATE), q AS (SELECT key) UPDATE t SET n = 1": {true, true},
	} {
		got := scanQuery(q)
		assert.Equal(t, want, [2]bool{got.locks, got.writes}, q)
	}
}

// TestScanQueryAllocs: the scan runs on every cursor query and early
// Close, so it must not allocate.
func TestScanQueryAllocs(t *testing.T) {
	for _, q := range []string{
		"WITH d AS (SELECT 'a''b', $$x$$, E'\\'' /* c */) SELECT * FROM d -- e\n FOR UPDATE",
		"SELECT 1.5, 1e3, 99999999999999999999 FROM t LIMIT 0x10",
		"SELECT * FROM t LIMIT 16 OFFSET 1.5 FETCH FIRST 99999999999999999999 ROWS ONLY",
	} {
		assert.Zero(t, testing.AllocsPerRun(100, func() { _ = scanQuery(q) }), q)
	}
}

// TestScanQueryBounded: the texts whose result fits in a portal stream's
// first batch (bounded.go), and the near misses that do not.
func TestScanQueryBounded(t *testing.T) {
	for q, want := range map[string]bool{
		// A SELECT without FROM, parenthesis or operator.
		"SELECT 1":                              true,
		"select $1::int":                        true,
		"SELECT 'a' AS x, $2::text[], E'\\n'":   true,
		"SELECT $1::pg_catalog.int4, true;":     true,
		"SELECT 1 WHERE $1 ORDER BY 1 OFFSET 3": true,
		"SELECT 1 -- FROM t":                    true,
		"SELECT current_user":                   true,
		"SELECT 1 FROM t":                       false,
		"SELECT 1 UNION SELECT 2":               false,
		"SELECT 1 EXCEPT SELECT 2":              false,
		"SELECT 1 INTERSECT SELECT 1":           false,
		"SELECT generate_series(1, 100)":        false,
		"SELECT (generate_series(1, 100))":      false,
		"SELECT 1 + 1":                          false,
		"SELECT -1":                             false,
		"SELECT *":                              false,
		"SELECT $1::numeric(10,2)":              false,
		"SELECT 1 INTO t":                       false,
		"SELECT 1; SELECT 2":                    false,
		"SELECT 1; DELETE FROM t":               false,
		"SELECT 'a\\', 'b'":                     false, // not certain
		"VALUES (1)":                            false,
		// LIMIT or FETCH FIRST outside parentheses.
		"SELECT * FROM t LIMIT 1":                                       true,
		"SELECT * FROM t ORDER BY id LIMIT 16":                          true,
		"SELECT * FROM t limit 0":                                       true,
		"SELECT * FROM t LIMIT 5 OFFSET 100":                            true,
		"SELECT * FROM t LIMIT 5 FOR UPDATE":                            true,
		"TABLE t LIMIT 2;":                                              true,
		"VALUES (1), (2) LIMIT 1":                                       true,
		"(SELECT * FROM t) LIMIT 3":                                     true,
		"WITH a AS (SELECT * FROM t) SELECT * FROM a LIMIT 1":           true,
		"SELECT * FROM t UNION ALL SELECT * FROM u LIMIT 4":             true,
		"SELECT * FROM t FETCH FIRST 3 ROWS ONLY":                       true,
		"SELECT * FROM t FETCH NEXT ROW ONLY":                           true,
		"SELECT * FROM t OFFSET 2 ROWS FETCH FIRST 1 ROW ONLY":          true,
		"SELECT * FROM t LIMIT 17":                                      false,
		"SELECT * FROM t LIMIT 1000":                                    false,
		"SELECT * FROM t LIMIT $1":                                      false,
		"SELECT * FROM t LIMIT ALL":                                     false,
		"SELECT * FROM t LIMIT NULL":                                    false,
		"SELECT * FROM t LIMIT 1 + 100":                                 false,
		"SELECT * FROM t LIMIT 1::bigint * 100":                         false,
		"SELECT * FROM t LIMIT (1)":                                     false,
		"SELECT * FROM t LIMIT 1.5":                                     false,
		"SELECT * FROM t LIMIT 0x10":                                    false,
		"SELECT * FROM t FETCH FIRST 3 ROWS WITH TIES":                  false,
		"SELECT * FROM t FETCH FIRST 30 ROWS ONLY":                      false,
		"SELECT * FROM (SELECT * FROM t LIMIT 1) s":                     false,
		"(SELECT * FROM t LIMIT 1) UNION (SELECT * FROM u)":             false,
		"SELECT * FROM t WHERE x IN (SELECT y FROM u LIMIT 1)":          false,
		"SELECT 'LIMIT 1' FROM t":                                       false,
		"SELECT * FROM t -- LIMIT 1":                                    false,
		"DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 1)":          false,
		"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d LIMIT 1": false,
		"SELECT * FROM t LIMIT 1; SELECT * FROM u":                      false,
		// SHOW of one setting.
		"SHOW TimeZone":     true,
		"show search_path;": true,
		"SHOW ALL":          false,
		"SHOW \"all\"":      false, // the server reads it as SHOW ALL
		"SHOW U&\"ALL\"":    false,
		"SHOW \"TimeZone\"": false, // quoted: not bounded, to be sure
		"SELECT 1 AS \"x\"": true,
		"SELECT U&'x'":      true,
		"SELECT * FROM t LIMIT 16 OPERATOR(pg_catalog.*) 1000": false,
		"SELECT * FROM t LIMIT 16 -- the end":                  true,
		"SELECT * FROM t LIMIT 2 /* c */ OFFSET 1":             true,
		"SELECT * FROM t LIMIT 99999999999999999999":           false,
		"SELECT * FROM t LIMIT 016":                            true,
		"EXPLAIN SELECT 1":                                     false,
		"FETCH 1 FROM c":                                       false,
		"SELECT 1 LIMIT 1":                                     true,
		"":                                                     false,
		"/* only a comment */":                                 false,
	} {
		assert.Equal(t, want, scanQuery(q).bounded, q)
	}
}
