package jsonstream

import (
	"os"
	"testing"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// TestMain starts a throwaway PostgreSQL for the integration tests on
// first use (or uses JSONSTREAM_TEST_DSN), stops it afterwards and fails
// the run if goroutines leaked.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
