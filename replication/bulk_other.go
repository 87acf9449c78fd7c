//go:build !unix

package replication

import "errors"

func setLowWater(uintptr, int) error { return errors.ErrUnsupported }
