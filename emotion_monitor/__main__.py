from emotion_monitor.cli import main

raise SystemExit(main())
