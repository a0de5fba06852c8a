"""The trusted host: Qt GUI, controllers and the headless CLI."""
