// Command images is `make image`: it builds the stickyvol and stickyvol-demo
// binaries and packs them as the OCI tarballs stickyvol.local/stickyvol:dev
// and stickyvol.local/demo:dev, the same recipe the demo and the e2e suites
// load into the local cluster, so there is one way to make them.
//
//	go run ./e2e/cmd/images [--cache-dir DIR]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

func main() {
	cacheDir := flag.String("cache-dir", cluster.DefaultCacheDir(), "`directory` that receives bin/ and images/")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	repo, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	im, err := framework.BuildImages(ctx, repo, *cacheDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "building images:", err)
		os.Exit(1)
	}
	for _, x := range im.All() {
		fmt.Printf("%s\t%s\t%s\n", x.Ref, x.Digest, x.Tarball)
	}
}
