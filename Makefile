# The two commands a newcomer needs (see README.md).
.PHONY: demo test

demo:  ## build the images, train on the bundled sample data, serve, predict with curl
	bash local_test/demo.sh

test:  ## set up everything (venvs, Docker, images) and run every test level
	bash dev/test.sh
