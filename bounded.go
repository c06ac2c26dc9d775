package jsonstream

import "strings"

// A bounded query is a read whose text shows that its whole result fits
// in a portal stream's first batch (portalFirstRows rows):
//
//   - a SELECT without FROM, set operation, parenthesis or operator (but
//     the cast ::), such as SELECT 1 or SELECT $1::int: one row, or none;
//   - a query whose last clause, outside parentheses, is LIMIT n or
//     FETCH FIRST n ROWS ONLY, n a number no greater than portalFirstRows;
//   - SHOW of one setting named without quotes (not SHOW ALL).
//
// There is nothing of such a result for a window to stop, so a portal
// stream asks for it whole, with the Sync that ends the exchange, in the
// query's own message: one round trip, as lib/pq's. A query without
// arguments goes as the simple Query lib/pq sends; one with arguments, or
// a prepared statement's, as Parse (unless prepared), Bind, Describe,
// Execute of every row, and Sync. The first batch of any other stream goes
// without Sync outside a transaction block: a Sync would end the implicit
// transaction, and the portal with it, while rows may be left, so that a
// small result's end takes a second round trip (syncWhole).
//
// Every ending of a bounded stream reads the rest of its result, within
// its Close's bound, as it reads the rest of a first batch: the server was
// asked for no more. Were the scan ever wrong, the stream would end as a
// single statement's under the same CloseMode: no more is lost or changed
// than lib/pq's Close would lose or change.

// boundScan follows the first statement of a text for scanQuery and says
// whether it is bounded (above).
type boundScan struct {
	// constant is cleared by a FROM, a set operation, a parenthesis or an
	// operator.
	constant bool
	// clause is how far a LIMIT or FETCH clause outside parentheses has
	// got (the bound* constants).
	clause int8
	// limited is set once such a clause bounds the result; all once the
	// statement says ALL, quoted once it holds a quoted identifier (SHOW
	// ALL, SHOW "all").
	limited, all, quoted bool
}

// The steps of a LIMIT or FETCH clause (boundScan.clause).
const (
	boundNone      int8 = iota
	boundLimit          // LIMIT: its count next
	boundLimitN         // LIMIT n: what follows must not be an operator
	boundFetch          // FETCH: FIRST or NEXT next
	boundFetchN         // FETCH FIRST: a count, or ROW or ROWS
	boundFetchRows      // FETCH FIRST n: ROW or ROWS
	boundFetchOnly      // FETCH FIRST n ROWS: ONLY, not WITH TIES
)

// word notes a keyword or identifier at depth (of parentheses).
func (b *boundScan) word(w string, depth int) {
	if oneOf(w, unboundWords) {
		b.constant = false
	}
	b.all = b.all || strings.EqualFold(w, "all")
	switch b.clause {
	case boundNone:
	case boundLimitN:
		// OFFSET or FOR UPDATE…; any other word (OPERATOR(…)) goes on
		// with the count's expression.
		b.limited = strings.EqualFold(w, "offset") || strings.EqualFold(w, "for")
		b.clause = boundNone
	case boundFetch:
		b.clause = boundNone
		if strings.EqualFold(w, "first") || strings.EqualFold(w, "next") {
			b.clause = boundFetchN
		}
		return
	case boundFetchN, boundFetchRows:
		b.clause = boundNone
		if strings.EqualFold(w, "row") || strings.EqualFold(w, "rows") {
			b.clause = boundFetchOnly
		}
		return
	case boundFetchOnly:
		b.limited = b.limited || strings.EqualFold(w, "only")
		b.clause = boundNone
		return
	default:
		b.clause = boundNone // LIMIT ALL, LIMIT NULL
	}
	if depth == 0 {
		switch {
		case strings.EqualFold(w, "limit"):
			b.clause = boundLimit
		case strings.EqualFold(w, "fetch"):
			b.clause = boundFetch
		}
	}
}

// unboundWords are the keywords after which a SELECT without FROM is not
// known to return one row.
var unboundWords = []string{"from", "union", "intersect", "except"}

// number notes a numeric literal.
func (b *boundScan) number(n string) {
	next := boundNone
	switch b.clause {
	case boundLimit:
		next = boundLimitN
	case boundFetchN:
		next = boundFetchRows
	}
	b.clause = boundNone
	if next != boundNone && smallCount(n) {
		b.clause = next
	}
}

// smallCount reports whether n, a numeric literal, is a whole number no
// greater than portalFirstRows written in decimal digits only.
func smallCount(n string) bool {
	k := 0
	for i := 0; i < len(n); i++ {
		if n[i] < '0' || n[i] > '9' {
			return false
		}
		if k = k*10 + int(n[i]-'0'); k > portalFirstRows {
			return false
		}
	}
	return len(n) > 0
}

// other notes any other token: a string or a parameter (punct 0), a
// quoted identifier ('"'), or punctuation.
func (b *boundScan) other(punct byte) {
	switch punct {
	case '"':
		b.quoted = true
	case 0, ',', ':', '[', ']', '.':
	default:
		b.constant = false
	}
	b.clause = boundNone
}

// end notes the end of the statement.
func (b *boundScan) end() {
	if b.clause == boundLimitN {
		b.limited = true
	}
	b.clause = boundNone
}

// bounded reports whether the first statement, of t, is bounded.
func (b *boundScan) bounded(t *queryText) bool {
	if t.writes || t.malformed || !t.certain || t.statements != 1 {
		return false
	}
	switch {
	case strings.EqualFold(t.first, "select") && b.constant:
		return true
	case strings.EqualFold(t.first, "show"):
		// The server reads SHOW "all" as SHOW ALL.
		return !b.all && !b.quoted
	}
	return b.limited
}
