package framework

import (
	"context"
	"flag"
	"fmt"

	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
)

// ParseFlags is how the e2e programs read their command lines: it adds the
// logging flags (-v, --logging-format) to fs, parses args, refuses
// positional arguments, applies the logging configuration and returns ctx
// with its logger.
func ParseFlags(ctx context.Context, fs *flag.FlagSet, args []string) (context.Context, error) {
	logging := logsapi.NewLoggingConfiguration()
	logsapi.AddGoFlags(logging, fs)
	if err := fs.Parse(args); err != nil {
		return ctx, err
	}
	if fs.NArg() > 0 {
		return ctx, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := logsapi.ValidateAndApply(logging, nil); err != nil {
		return ctx, err
	}
	return klog.NewContext(ctx, klog.Background()), nil
}
