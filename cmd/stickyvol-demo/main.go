// Command stickyvol-demo is the small static program in the example
// StatefulSet's image (deploy/examples/web): `serve` serves a pod's volume over
// HTTP, `fetch` copies a file from another pod by its DNS name. It exists
// because Debian's static busybox wget, which would otherwise do this, dies with
// SIGSEGV even against a local address.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/cmd/stickyvol-demo/internal/webfiles"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

var errNoCommand = errors.New("want a command: serve, fetch or version")

const usage = `usage:
  stickyvol-demo serve [--dir DIR] [--addr ADDR]
  stickyvol-demo fetch --from URL --to FILE [--timeout D] [--interval D]
  stickyvol-demo version
`

func main() {
	// The program runs as PID 1 in its container, where a signal left at its
	// default action is ignored; handling SIGTERM makes pod deletion prompt.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx = klog.NewContext(ctx, klog.Background())

	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "stickyvol-demo: %v\n", err)
		if errors.Is(err, errNoCommand) {
			fmt.Fprint(os.Stderr, usage)
		}
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errNoCommand
	}
	switch cmd, args := args[0], args[1:]; cmd {
	case "serve":
		return serve(ctx, args)
	case "fetch":
		return fetch(ctx, args)
	case "version":
		fmt.Println(version)
		return nil
	default:
		return fmt.Errorf("unknown command %q: %w", cmd, errNoCommand)
	}
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fs.String("dir", "/data", "directory whose files are served")
	addr := fs.String("addr", ":8080", "TCP address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	return webfiles.Serve(ctx, ln, *dir)
}

func fetch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ContinueOnError)
	var cfg webfiles.FetchConfig
	fs.StringVar(&cfg.URL, "from", "", "URL of the file to copy (required)")
	fs.StringVar(&cfg.Dest, "to", "", "local file to write (required); its directory must exist")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "give up after this long")
	fs.DurationVar(&cfg.Interval, "interval", time.Second, "pause between attempts")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.URL == "" || cfg.Dest == "" {
		return errors.New("fetch needs --from and --to")
	}
	return webfiles.Fetch(ctx, cfg)
}
