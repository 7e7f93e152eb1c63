from mesh_agent.daemon.cli import main

main()
