//go:build !unix

package jsonstreamotel_test

import "time"

// processCPU is not measured here; the cpu-ns metrics are left out.
func processCPU() time.Duration { return 0 }
