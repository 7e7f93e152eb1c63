from mesh_agent.cli import main

main()
